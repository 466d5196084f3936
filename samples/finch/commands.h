/* Subcommands of the finch command-line tool; main.c dispatches on argv[1]. Each returns the
 * process exit status (0 ok, 1 failure with a message on stderr, 2 usage error). */
#ifndef FINCH_SAMPLES_COMMANDS_H
#define FINCH_SAMPLES_COMMANDS_H

int finch_cmd_info(int argc, char **argv);
int finch_cmd_forward(int argc, char **argv);
int finch_cmd_tokenize(int argc, char **argv);
int finch_cmd_train(int argc, char **argv);
int finch_cmd_init(int argc, char **argv);

#endif
