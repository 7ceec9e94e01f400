"""The worker: runs tasks from the master in a pool of processes or threads."""
