/* Compiled drop-in for pgbouncer_py/proto/scan.py: the message-boundary walks of the relay's hot path.
 *
 * Same functions, same arguments, same results as the pure-Python versions there (tests/unit/test_scan.py
 * runs one table against both). Only offsets and counts come back: no per-message objects. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* first byte of a Query text that may begin PREPARE, EXECUTE or DEALLOCATE (proto/sql.py FIRST_BYTES) */
static const char SQL_FIRST[] = "PpEeDd \t\n\r\f\v-/";
static unsigned char sql_first[256];

#define CLIENT_PS 1          /* prepared statements tracked on this link (prepare.PS_ON) */
#define CLIENT_NO_PQEXEC 2   /* disable_pqexec: a Query is the caller's business */

/* A Query text starting at buf[i] (i < e; e: the end of the message or of the read) that may be SQL PREPARE,
 * EXECUTE or DEALLOCATE (sql.might_start decides): its first byte is in SQL_FIRST and, when that is a letter,
 * the next two bytes are that command's next letters in any case (PRE, EXE, DEA), or are not in this read. So
 * DELETE, DROP, END, EXPLAIN, PERFORM... pass without a stop (scan.py _may_be_sql is the same test). */
static inline int may_be_sql(const unsigned char *buf, Py_ssize_t i, Py_ssize_t e)
{
    const char *kw;
    int k;

    if (!sql_first[buf[i]])
        return 0;
    switch (buf[i] | 0x20) {
    case 'p':
        kw = "pre";
        break;
    case 'e':
        kw = "exe";
        break;
    case 'd':
        kw = "dea";
        break;
    default:
        return 1;           /* a blank, or what may start a comment */
    }
    for (k = 1; k < 3; k++) {
        if (i + k >= e)
            return 1;       /* cut: unsure */
        if ((buf[i + k] | 0x20) != kw[k])
            return 0;
    }
    return 1;
}

static inline Py_ssize_t msg_len(const unsigned char *p)
{
    return ((Py_ssize_t)p[0] << 24) | ((Py_ssize_t)p[1] << 16) | ((Py_ssize_t)p[2] << 8) | (Py_ssize_t)p[3];
}

/* Borrow the bytes of `obj` (bytes fast, anything with the buffer protocol otherwise). */
static int get_data(PyObject *obj, Py_buffer *view, const unsigned char **buf, Py_ssize_t *n)
{
    if (PyBytes_CheckExact(obj)) {
        view->obj = NULL;
        *buf = (const unsigned char *)PyBytes_AS_STRING(obj);
        *n = PyBytes_GET_SIZE(obj);
        return 0;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    *buf = (const unsigned char *)view->buf;
    *n = view->len;
    return 0;
}

static void put_data(Py_buffer *view)
{
    if (view->obj != NULL)
        PyBuffer_Release(view);
}

static int get_offset(PyObject *obj, Py_ssize_t *out)
{
    Py_ssize_t v = PyLong_AsSsize_t(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0) {
        PyErr_SetString(PyExc_ValueError, "negative offset");
        return -1;
    }
    *out = v;
    return 0;
}

/* server_scan(data, pos) -> offset of the first ReadyForQuery, ParameterStatus or 16/19-byte
 * CommandComplete whose header starts at or after pos, else where the walk ran out. */
static PyObject *server_scan(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *buf;
    Py_ssize_t n, pos;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "server_scan(data, pos)");
        return NULL;
    }
    if (get_offset(args[1], &pos) < 0 || get_data(args[0], &view, &buf, &n) < 0)
        return NULL;
    while (pos + 5 <= n) {
        unsigned char t = buf[pos];
        Py_ssize_t ln = msg_len(buf + pos + 1);
        if (t == 'Z' || t == 'S' || (t == 'C' && (ln == 19 || ln == 16)))
            break;
        pos += 1 + ln;
    }
    put_data(&view);
    return PyLong_FromSsize_t(pos);
}

/* The extended-protocol batch at pos, up to its Sync, complete and naming nothing: offset after the Sync,
 * else -1 (the caller's prepare.unnamed_batch_end decides, including the SQL EXECUTE check). */
static Py_ssize_t unnamed_batch_end(const unsigned char *buf, Py_ssize_t n, Py_ssize_t pos, Py_ssize_t max_packet)
{
    while (pos + 5 <= n) {
        unsigned char t = buf[pos];
        Py_ssize_t ln = msg_len(buf + pos + 1);
        Py_ssize_t end = pos + 1 + ln;
        if (end > n || ln < 4 || ln > max_packet)
            return -1;
        switch (t) {
        case 'S':
            return end;
        case 'P':
            if (end - pos < 8 || buf[pos + 5] != 0 || sql_first[buf[pos + 6]])
                return -1;
            break;
        case 'B': {
            const unsigned char *z = memchr(buf + pos + 5, 0, (size_t)(end - pos - 5));
            if (z == NULL || z + 1 >= buf + end || z[1] != 0)
                return -1;
            break;
        }
        case 'D':
        case 'C':
            if (end - pos < 7 || (buf[pos + 5] == 'S' && buf[pos + 6] != 0))
                return -1;
            break;
        case 'E':
        case 'H':
            break;
        default:
            return -1;
        }
        pos = end;
    }
    return -1;
}

/* client_scan(data, pos, max_packet, flags) -> (pos, syncs, work): walks client messages from pos, counting
 * Query/Sync (syncs) and noting whether any message is work for the server (work), and stops at what the
 * caller must look at itself: Terminate, a bad length, a type the pooler does not know (scan.CLIENT_TYPES),
 * a Query under disable_pqexec or one that may be SQL PREPARE/EXECUTE/DEALLOCATE, and (flags & CLIENT_PS)
 * Parse/Bind/Describe/Close that are not a complete unnamed batch. A complete unnamed batch counts as one
 * Sync. */
static PyObject *client_scan(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *buf;
    Py_ssize_t n, pos, max_packet, syncs = 0;
    long flags;
    int work = 0;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "client_scan(data, pos, max_packet, flags)");
        return NULL;
    }
    if (get_offset(args[1], &pos) < 0 || get_offset(args[2], &max_packet) < 0)
        return NULL;
    flags = PyLong_AsLong(args[3]);
    if (flags == -1 && PyErr_Occurred())
        return NULL;
    if (get_data(args[0], &view, &buf, &n) < 0)
        return NULL;
    while (pos + 5 <= n) {
        unsigned char t = buf[pos];
        Py_ssize_t ln = msg_len(buf + pos + 1);
        if (t == 'X' || ln < 4 || ln > max_packet)
            break;
        switch (t) {
        case 'Q':
            if (flags & CLIENT_NO_PQEXEC)
                goto out;
            if ((flags & CLIENT_PS) && pos + 5 < n && may_be_sql(buf, pos + 5, pos + 1 + ln < n ? pos + 1 + ln : n))
                goto out;
            syncs++;
            work = 1;
            break;
        case 'S':
            syncs++;
            work = 1;
            break;
        case 'E':
        case 'F':
            work = 1;
            break;
        case 'C':
            if (!(flags & CLIENT_PS))
                break;          /* Close is only work when statements are tracked */
            /* fall through */
        case 'P':
        case 'B':
        case 'D':
            work = 1;
            if (flags & CLIENT_PS) {
                Py_ssize_t end = unnamed_batch_end(buf, n, pos, max_packet);
                if (end < 0)
                    goto out;
                syncs++;
                pos = end;
                continue;
            }
            break;
        case 'H':
        case 'd':
        case 'c':
        case 'f':
            break;
        default:
            goto out;       /* a type the pooler does not know: the caller refuses it */
        }
        pos += 1 + ln;
    }
out:
    put_data(&view);
    return Py_BuildValue("(nni)", pos, syncs, work);
}

static PyMethodDef methods[] = {
    {"server_scan", (PyCFunction)(void (*)(void))server_scan, METH_FASTCALL,
     "server_scan(data, pos) -> offset of the next message the server side must look at"},
    {"client_scan", (PyCFunction)(void (*)(void))client_scan, METH_FASTCALL,
     "client_scan(data, pos, max_packet, flags) -> (pos, syncs, work)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pgbouncer_py.proto._scan",
    "Compiled message-boundary walks of the relay (see scan.py).", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__scan(void)
{
    PyObject *m;
    for (const char *c = SQL_FIRST; *c; c++)
        sql_first[(unsigned char)*c] = 1;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObject(m, "SQL_FIRST", PyBytes_FromString(SQL_FIRST)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
