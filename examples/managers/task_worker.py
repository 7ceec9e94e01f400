# task_worker.py -- the classic multiprocessing.managers tutorial, on conveyor.
#
# Only the import differs from the tutorial. Run:  python task_worker.py [port] [seconds per task]
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import time, sys, queue
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager

# A similar QueueManager:
class QueueManager(BaseManager):
    pass

# This QueueManager only gets the queues from the network, so register names only:
QueueManager.register('get_task_queue')
QueueManager.register('get_result_queue')

# Connect to the server, i.e. the machine running task_master.py:
server_addr = '127.0.0.1'
port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
delay = float(sys.argv[2]) if len(sys.argv) > 2 else 1
print('Connect to server %s...' % server_addr)
# Port and authkey must match task_master.py exactly:
m = QueueManager(address=(server_addr, port), authkey=b'abc')
# Connect over the network:
m.connect()
# Get the queue objects:
task = m.get_task_queue()
result = m.get_result_queue()
# Take tasks from the task queue and write results to the result queue:
for i in range(10):
    try:
        n = task.get(timeout=1)
        print('run task %d * %d...' % (n, n))
        r = '%d * %d = %d' % (n, n, n*n)
        time.sleep(delay)
        result.put(r)
    except queue.Empty:
        print('task queue is empty.')
# Done:
print('worker exit.')
