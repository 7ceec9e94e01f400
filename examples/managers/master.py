# master.py -- dispatch Job objects to slaves and collect them back.
#
# The well-known job-dispatch example, with only the import changed (and a
# bounded number of rounds instead of `while True`). Run:  python master.py [port] [rounds]
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import sys
from queue import Queue
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager
from jobs import Job


class Master:

    def __init__(self):
        # The queue of dispatched jobs:
        self.dispatched_job_queue = Queue()
        # The queue of finished jobs:
        self.finished_job_queue = Queue()

    def get_dispatched_job_queue(self):
        return self.dispatched_job_queue

    def get_finished_job_queue(self):
        return self.finished_job_queue

    def start(self, port, rounds):
        # Register the dispatched and finished job queues on the network:
        BaseManager.register('get_dispatched_job_queue', callable=self.get_dispatched_job_queue)
        BaseManager.register('get_finished_job_queue', callable=self.get_finished_job_queue)

        # Listen on the port and start the server:
        manager = BaseManager(address=('0.0.0.0', port), authkey=b'jobs')
        manager.start()

        # Get the queues through the registered methods:
        dispatched_jobs = manager.get_dispatched_job_queue()
        finished_jobs = manager.get_finished_job_queue()

        # Dispatch 10 jobs at a time; when all 10 are back, dispatch 10 more:
        job_id = 0
        for _ in range(rounds):
            for i in range(0, 10):
                job_id = job_id + 1
                job = Job(job_id)
                print('Dispatch job: %s' % job.job_id)
                dispatched_jobs.put(job)

            for i in range(0, 10):
                job = finished_jobs.get(timeout=60)
                print('Finished Job: %s (result %s)' % (job.job_id, job.result))

        manager.shutdown()
        print('master exit.')


if __name__ == "__main__":
    master = Master()
    master.start(int(sys.argv[1]) if len(sys.argv) > 1 else 8888,
                 int(sys.argv[2]) if len(sys.argv) > 2 else 2)
