# task_master.py -- the classic multiprocessing.managers tutorial, on conveyor.
#
# Only the import differs from the tutorial. Run:  python task_master.py [port]
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import random, time, queue, sys
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager

# The queue that sends tasks:
task_queue = queue.Queue()
# The queue that receives results:
result_queue = queue.Queue()

# A QueueManager derived from BaseManager:
class QueueManager(BaseManager):
    pass

# Register both queues on the network; callable associates each with a Queue object:
QueueManager.register('get_task_queue', callable=lambda: task_queue)
QueueManager.register('get_result_queue', callable=lambda: result_queue)
# Bind port 5000 (or argv[1]) and set the authkey 'abc':
port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
manager = QueueManager(address=('', port), authkey=b'abc')
# Start the queues:
manager.start()
# Get the queue objects reached through the network:
task = manager.get_task_queue()
result = manager.get_result_queue()
# Put some tasks in:
for i in range(10):
    n = random.randint(0, 10000)
    print('Put task %d...' % n)
    task.put(n)
# Read the results from the result queue:
print('Try get results...')
for i in range(10):
    r = result.get(timeout=10)
    print('Result: %s' % r)
# Shut down:
manager.shutdown()
print('master exit.')
