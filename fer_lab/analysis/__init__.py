"""Analysis (01_explore, 04_evaluate, 05_compare): what the data holds, how a model does, how runs differ."""
