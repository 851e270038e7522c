/**
 * Throwaway certificates for `vfio-mig demo --transport tls`: a CA, a server certificate for
 * localhost/127.0.0.1 and a client certificate, made with the openssl command (Node has no X.509
 * writer). Mutual authentication: each side presents its certificate and checks the other's.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, migError } from '../fsm/errors.js';
import type { TransportOptions } from '../transport/types.js';

export interface DemoCredentials {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

function openssl(args: string[]): void {
  try {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    throw migError(ErrorCodes.USAGE, `--transport tls needs the openssl command to make demo certificates: ${(err as Error).message}`, { cause: err });
  }
}

/** Make the demo's CA, server and client certificates in `dir` (paths of PEM files). */
export function tlsDemoCredentials(dir: string): DemoCredentials {
  const p = (n: string) => join(dir, n);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=vfio-mig demo CA', '-keyout', p('ca.key'), '-out', p('ca.pem')]);
  for (const who of ['server', 'client']) {
    openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${who === 'server' ? 'localhost' : 'vfio-mig demo client'}`, '-keyout', p(`${who}.key`), '-out', p(`${who}.csr`)]);
    writeFileSync(p(`${who}.ext`), who === 'server' ? 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n');
    openssl(['x509', '-req', '-in', p(`${who}.csr`), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', p(`${who}.ext`), '-out', p(`${who}.pem`)]);
  }
  return { ca: p('ca.pem'), serverCert: p('server.pem'), serverKey: p('server.key'), clientCert: p('client.pem'), clientKey: p('client.key') };
}

/** Transport options from PEM file paths (--tls-cert, --tls-key, --tls-ca). */
export function tlsOptions(cert: string | undefined, key: string | undefined, ca: string | undefined): TransportOptions {
  const o: TransportOptions = {};
  if (cert) o.cert = readFileSync(cert);
  if (key) o.key = readFileSync(key);
  if (ca) o.ca = readFileSync(ca);
  return o;
}
