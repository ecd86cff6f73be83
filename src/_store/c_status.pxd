# c_status.pxd -- mirrors status.h: the status codes and the per-thread error detail.
cdef extern from "status.h" nogil:
    enum:
        STORE_OK
        STORE_ERR_FULL
        STORE_ERR_TOO_LARGE
        STORE_ERR_ABSENT
        STORE_ERR_EXISTS
        STORE_ERR_NOT_SEALED
        STORE_ERR_TABLE_FULL
        STORE_ERR_NO_SLOT
        STORE_ERR_TIMEOUT
        STORE_ERR_NOSPC
        STORE_ERR_INVALID
        STORE_ERR_SYS

    const char *store_status_name(int status)
    const char *store_last_error()
    int store_last_errno()
