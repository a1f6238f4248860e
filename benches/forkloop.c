/* forkloop N PORT: listen on 127.0.0.1:PORT, then fork N children that exit at once, waiting for
 * each: the fork cost benches/forkcost.sh counts (a listener on a flagged port makes the library
 * track an fd, so its fork handlers have work). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int n = atoi(argv[1]);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a; memset(&a, 0, sizeof a);
    a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[2])); a.sin_addr.s_addr = htonl(0x7f000001);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 8)) { perror("listen"); return 1; }
    for (int i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        waitpid(p, NULL, 0);
    }
    close(s);
    return 0;
}
