# Seed: the opening example of "Ray Generators" (streaming), ported by changing only the
# import.  Each item is printed every 5 seconds, not after 25 seconds.
import pygen
import time

# Takes 25 seconds to finish.
@pygen.remote(num_returns="streaming")
def f():
    for i in range(5):
        time.sleep(5)
        yield i

for obj_ref in f.remote():
    # It is printed every 5 seconds, not after 25 seconds.
    print(pygen.get(obj_ref))
