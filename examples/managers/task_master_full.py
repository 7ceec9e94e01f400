# task_master_full.py -- the tutorial variant that waits until the result queue is full().
#
# Only the import differs. Run:  python task_master_full.py [port]
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import time, queue, sys
from multiprocessing import freeze_support
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager

task_number = 10
# Bounded queues: the result queue is full() once every task has reported.
task_queue = queue.Queue(task_number)
result_queue = queue.Queue(task_number)

# Named functions rather than lambdas, as the Windows version of the tutorial does:
def gettask():
    return task_queue

def getresult():
    return result_queue

def test():
    # Register both queues on the network (here on BaseManager itself):
    BaseManager.register('get_task', callable=gettask)
    BaseManager.register('get_result', callable=getresult)
    # Bind the port and set the authkey:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5002
    manager = BaseManager(address=('127.0.0.1', port), authkey=b'123')
    # Start:
    manager.start()
    try:
        # Get the task and result queues through the network:
        task = manager.get_task()
        result = manager.get_result()
        # Add the tasks:
        for i in range(task_number):
            print('Put task %d...' % i)
            task.put(i)
        # Check once a second whether every task has been done:
        while not result.full():
            time.sleep(1)
        for i in range(result.qsize()):
            ans = result.get()
            print('task %d is finish , runtime:%d s' % ans)
    except:
        print('Manager error')
    finally:
        # Always shut down:
        manager.shutdown()

if __name__ == '__main__':
    freeze_support()
    test()
