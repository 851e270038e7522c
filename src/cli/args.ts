/**
 * A small, strict argument parser: declared long options (with an optional one-letter alias),
 * `--name value` and `--name=value`, boolean flags, positionals, `--` ending options. Unknown options
 * and missing values are usage errors (exit code 64), never silently ignored.
 */
import { ErrorCodes, migError } from '../fsm/errors.js';

export interface OptionSpec {
  /** Long name without dashes ("downtime-limit"). */
  name: string;
  /** One-letter alias without the dash. */
  short?: string;
  /** Takes a value (else it is a boolean flag). */
  value?: boolean;
  /** Placeholder for help text ("MS"). */
  arg?: string;
  help: string;
  /** Default shown in help. */
  default?: string;
}

export interface ParsedArgs {
  options: Map<string, string | true>;
  positionals: string[];
}

export function parseArgs(argv: readonly string[], specs: readonly OptionSpec[]): ParsedArgs {
  const byName = new Map(specs.map((s) => [s.name, s]));
  const byShort = new Map(specs.filter((s) => s.short).map((s) => [s.short as string, s]));
  const options = new Map<string, string | true>();
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    let spec: OptionSpec | undefined;
    let inline: string | undefined;
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      inline = eq >= 0 ? a.slice(eq + 1) : undefined;
      spec = byName.get(name);
      if (!spec) throw migError(ErrorCodes.USAGE, `unknown option '--${name}'`);
    } else if (a.startsWith('-') && a.length === 2) {
      spec = byShort.get(a.slice(1));
      if (!spec) throw migError(ErrorCodes.USAGE, `unknown option '${a}'`);
    } else {
      positionals.push(a);
      continue;
    }
    if (spec.value) {
      const v = inline ?? argv[++i];
      if (v === undefined) throw migError(ErrorCodes.USAGE, `option '--${spec.name}' needs a value (${spec.arg ?? 'VALUE'})`);
      options.set(spec.name, v);
    } else {
      if (inline !== undefined) throw migError(ErrorCodes.USAGE, `option '--${spec.name}' takes no value`);
      options.set(spec.name, true);
    }
  }
  return { options, positionals };
}

/** Help text of a command: usage line, description, aligned options. */
export function formatHelp(usage: string, description: string, specs: readonly OptionSpec[]): string {
  const rows = specs.map((s) => {
    const left = `${s.short ? `-${s.short}, ` : '    '}--${s.name}${s.value ? ` ${s.arg ?? 'VALUE'}` : ''}`;
    return [left, s.help + (s.default !== undefined ? ` (default: ${s.default})` : '')] as const;
  });
  const width = Math.max(0, ...rows.map(([l]) => l.length)) + 2;
  const lines = rows.map(([l, r]) => `  ${l.padEnd(width)}${r}`);
  return `usage: ${usage}\n\n${description}\n\noptions:\n${lines.join('\n')}\n`;
}
