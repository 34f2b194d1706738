"""The sequence as Keras, tf.data and Grain inputs."""
