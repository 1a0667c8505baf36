"""Reports: plots and tables of what a run or an optimization achieved."""
