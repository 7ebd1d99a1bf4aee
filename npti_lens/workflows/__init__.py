"""The layer every front end calls: answer under a condition, search, merge, score a file, ablations, tuning, the judge's data and control, monitoring, building question sets."""
