# Seed: "Exception handling" of generators with num_returns set by the caller and
# "dynamic", ported by changing only the import.
import pygen


@pygen.remote
def generator():
    for i in range(2):
        yield i
    raise Exception("error")


ref1, ref2, ref3, ref4 = generator.options(num_returns=4).remote()
assert pygen.get([ref1, ref2]) == [0, 1]
# All remaining ObjectRefs will contain the error.
try:
    pygen.get([ref3, ref4])
except Exception as error:
    print(error)

dynamic_ref = generator.options(num_returns="dynamic").remote()
ref_generator = pygen.get(dynamic_ref)
ref1, ref2, ref3 = ref_generator
assert pygen.get([ref1, ref2]) == [0, 1]
# Generators with num_returns="dynamic" will store the exception in the final
# ObjectRef.
try:
    pygen.get(ref3)
except Exception as error:
    print(error)

# The seed's "known limitation": here the generator yields exactly num_returns values and
# then raises.  Ray loses that exception; in pygen the last ref holds it (the ones before
# keep their values), as it holds the error of a generator that yields MORE values than
# num_returns (see test_generators_static.py).
ref1, ref2 = generator.options(num_returns=2).remote()
assert pygen.get(ref1) == 0
try:
    pygen.get(ref2)
except Exception as error:
    print(error)
