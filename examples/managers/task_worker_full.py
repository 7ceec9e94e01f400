# task_worker_full.py -- the worker of the result-queue-full() tutorial variant.
#
# Only the import differs. Run:  python task_worker_full.py [port] [max seconds per task]
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import time, sys, queue, random
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager

BaseManager.register('get_task')
BaseManager.register('get_result')

port = int(sys.argv[1]) if len(sys.argv) > 1 else 5002
max_sleep = int(sys.argv[2]) if len(sys.argv) > 2 else 3
conn = BaseManager(address=('127.0.0.1', port), authkey=b'123')

try:
    conn.connect()
except:
    print('Connection failed')
    sys.exit()

task = conn.get_task()
result = conn.get_result()

while not task.empty():
    n = task.get(timeout=1)
    print('run task %d' % n)
    sleeptime = random.randint(0, max_sleep)
    time.sleep(sleeptime)
    rt = (n, sleeptime)
    result.put(rt)
print('worker exit.')
