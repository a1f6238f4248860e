/* underscore_fork_then_send: fork_then_send with the sender child made by glibc's _Fork (2.34+), which runs no
 * pthread_atfork handlers: the child must still be recorded as a holder of the connection it inherits, or the
 * parent's close right after the fork ends the connection under it. The child only calls async-signal-safe
 * functions, as _Fork's contract asks, and leaves with _exit. */
#define SENDER_FORK _Fork
#define PROGRAM "underscore_fork_then_send"
#include "fork_then_send.c"
