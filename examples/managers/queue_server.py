# queue_server.py -- the "Using a remote manager" example of the multiprocessing docs.
#
# Serves one durable queue in this process until Ctrl-C or SIGTERM.
# Run:  python queue_server.py [port]
#
# The tutorial's own style is kept, so ruff's style rules are off here:
# ruff: noqa: B007, E401, E701, E722, F401, I001, UP031
import sys
from queue import Queue
from conveyor.managers import BaseManager  # was: from multiprocessing.managers import BaseManager

queue = Queue()
class QueueManager(BaseManager): pass
QueueManager.register('get_queue', callable=lambda: queue)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
m = QueueManager(address=('', port), authkey=b'abracadabra')
s = m.get_server()
print('serving on port %d, data in %s' % (s.address[1], s.data_dir), flush=True)
s.serve_forever()
