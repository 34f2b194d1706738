"""Writing datasets: the one save, the streaming Writer, ragged writes, the parallel plan/finish shared by convert and Dask."""
