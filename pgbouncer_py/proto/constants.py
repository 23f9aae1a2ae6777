"""Wire-protocol constants: message type bytes (as ints), request codes, auth codes, SQLSTATEs."""

PROTO_V3 = 3 << 16            # 196608
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
NEGOTIATE_MINOR = 0           # we speak 3.0 and answer newer minors with NegotiateProtocolVersion

# frontend message types
Q_QUERY = ord("Q")
Q_PARSE = ord("P")
Q_BIND = ord("B")
Q_DESCRIBE = ord("D")
Q_EXECUTE = ord("E")
Q_SYNC = ord("S")
Q_FLUSH = ord("H")
Q_CLOSE = ord("C")
Q_TERMINATE = ord("X")
Q_PASSWORD = ord("p")
Q_COPY_DATA = ord("d")
Q_COPY_DONE = ord("c")
Q_COPY_FAIL = ord("f")
Q_FUNCTION_CALL = ord("F")

# backend message types
B_AUTH = ord("R")
B_PARAMETER_STATUS = ord("S")
B_BACKEND_KEY = ord("K")
B_READY = ord("Z")
B_ERROR = ord("E")
B_NOTICE = ord("N")
B_COMMAND_COMPLETE = ord("C")
B_ROW_DESCRIPTION = ord("T")
B_DATA_ROW = ord("D")
B_PARSE_COMPLETE = ord("1")
B_BIND_COMPLETE = ord("2")
B_CLOSE_COMPLETE = ord("3")
B_NEGOTIATE_VERSION = ord("v")
B_COPY_IN = ord("G")
B_COPY_OUT = ord("H")
B_COPY_BOTH = ord("W")
B_NOTIFICATION = ord("A")
B_EMPTY_QUERY = ord("I")

# authentication request codes
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

# SQLSTATEs
SQLSTATE_PROTOCOL_VIOLATION = "08P01"
SQLSTATE_CONFIG_FILE_ERROR = "F0000"
SQLSTATE_INVALID_PASSWORD = "28P01"
SQLSTATE_INVALID_AUTH = "28000"
SQLSTATE_CANNOT_CONNECT_NOW = "57P03"    # "the database system is starting up" (or shutting down)

# PgBouncer limits
MAX_USERNAME = 128
MAX_PASSWORD = 65531
MAX_STARTUP_PACKET = 10000
