# slave.py -- run the Job objects master.py dispatches and send them back.
#
# Only the import differs from the well-known example (and it stops once no
# job came for a while). Run:  python slave.py [port] [seconds per job]
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import sys
import time
from queue import Queue, Empty
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager
from jobs import Job  # the class of the objects that arrive


class Slave:

    def __init__(self):
        # The queue of dispatched jobs:
        self.dispatched_job_queue = Queue()
        # The queue of finished jobs:
        self.finished_job_queue = Queue()

    def start(self, port, delay):
        # Register the dispatched and finished job queues by name:
        BaseManager.register('get_dispatched_job_queue')
        BaseManager.register('get_finished_job_queue')

        # Connect to the master:
        server = '127.0.0.1'
        print('Connect to server %s...' % server)
        manager = BaseManager(address=(server, port), authkey=b'jobs')
        manager.connect()

        # Get the queues through the registered methods:
        dispatched_jobs = manager.get_dispatched_job_queue()
        finished_jobs = manager.get_finished_job_queue()

        # Run jobs and send them back (running a job here just squares its id):
        while True:
            try:
                job = dispatched_jobs.get(timeout=5)
            except Empty:
                break
            print('Run job: %s ' % job.job_id)
            time.sleep(delay)
            finished_jobs.put(job.run())
        print('slave exit.')


if __name__ == "__main__":
    slave = Slave()
    slave.start(int(sys.argv[1]) if len(sys.argv) > 1 else 8888,
                float(sys.argv[2]) if len(sys.argv) > 2 else 1)
