# jobs.py -- the job class master.py dispatches and slave.py runs.
#
# It travels pickled through the queues, so both sides import it from here.


class Job:
    def __init__(self, job_id):
        self.job_id = job_id
        self.result = None

    def run(self):
        self.result = self.job_id * self.job_id
        return self
