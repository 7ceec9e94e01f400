# queue_client.py -- the client side of the "Using a remote manager" example.
#
# Run:  python queue_client.py [port] put WORD...   or   python queue_client.py [port] get N
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import sys
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager

class QueueManager(BaseManager): pass
QueueManager.register('get_queue')
port = int(sys.argv[1])
m = QueueManager(address=('127.0.0.1', port), authkey=b'abracadabra')
m.connect()
queue = m.get_queue()
if sys.argv[2] == 'put':
    for word in sys.argv[3:]:
        queue.put(word)
    print('put', len(sys.argv[3:]))
else:
    for _ in range(int(sys.argv[3])):
        print(queue.get(timeout=10))
