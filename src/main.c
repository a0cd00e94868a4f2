/*
 * main.c - placeholder while the daemon is assembled.
 */
#include <stdio.h>

int
main(void)
{
	fprintf(stderr, "idpd: not yet assembled\n");
	return 1;
}
