/* The pod sandbox's first process (the kubelet's "pause" container), for the cluster test.
 *
 * It holds the pod's namespaces open for the pod's lifetime and does nothing else: as
 * PID 1 of the pod's PID namespace (when the pod shares one) it reaps the orphans handed
 * to it, and SIGINT or SIGTERM end it at once with status 0, so that stopping a sandbox
 * never waits for the runtime's SIGKILL. Static, so the image holds this file alone.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig)
{
	(void)sig;
	_exit(0);
}

static void reap(int sig)
{
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

int main(int argc, char **argv)
{
	struct sigaction sa;

	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("otel-podnet-pause v1");
		return 0;
	}
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_handler = stop;
	if (sigaction(SIGINT, &sa, NULL) || sigaction(SIGTERM, &sa, NULL))
		return 1;
	sa.sa_handler = reap;
	sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
	if (sigaction(SIGCHLD, &sa, NULL))
		return 1;
	for (;;)
		pause();
}
