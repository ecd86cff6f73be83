# c_fault.pxd -- mirrors fault.h: the named crash points of the fault-injection tests.
cdef extern from "fault.h" nogil:
    enum fault_point:
        FAULT_NONE
        FAULT_ALLOC_SPLIT
        FAULT_ALLOC_SPLIT_HALF
        FAULT_FREE_COALESCE
        FAULT_FREE_MERGED
        FAULT_CREATE_FILLED
        FAULT_CREATE_PUBLISHED
        FAULT_CREATE_INDEXED
        FAULT_SEAL
        FAULT_PIN
        FAULT_UNPIN
        FAULT_DELETE_STATE
        FAULT_DELETE_UNINDEXED
        FAULT_DELETE_FREED
        FAULT_RECOVER
        FAULT_RELEASE_SLOT
        FAULT_REBUILD_BEGIN
        FAULT_WARM_RESERVED
        FAULT_WARM_COMMIT
        FAULT_PURGE_CLEARED
        FAULT_PURGE_PUNCHED
        FAULT_CREATE_RESERVED
        FAULT_COUNT
