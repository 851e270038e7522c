/**
 * The `vfio-mig` command.
 */
export async function main(argv: string[]): Promise<number> {
  const [cmd] = argv;
  if (!cmd || cmd === '--help' || cmd === 'help') {
    process.stdout.write('usage: vfio-mig <command> [options]\n\ncommands: demo, migrate, receive, save, restore, inspect\n');
    return cmd ? 0 : 64;
  }
  process.stderr.write(`vfio-mig: unknown command '${cmd}'\n`);
  return 64;
}
