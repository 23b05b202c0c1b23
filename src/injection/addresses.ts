import { isIPv4 } from "node:net";
import type { Hsm } from "../discovery/types.js";

/** Parses a dotted IPv4 address into a number, so addresses sort by value and not as text. */
function ipv4ToNumber(address: string): number {
  return address
    .split(".")
    .reduce((total, octet) => total * 256 + Number(octet), 0);
}

/**
 * Orders IPv4 addresses numerically, so 10.0.2.40 comes before 10.0.12.5. A stable order keeps
 * the injected config identical across replicas and refreshes, which keeps reinvocation a no-op.
 */
export function compareIpv4(left: string, right: string): number {
  return ipv4ToNumber(left) - ipv4ToNumber(right);
}

/**
 * Returns the HSMs that may be handed to clients: ACTIVE ones with a valid ENI IPv4 address,
 * sorted by address. Duplicate addresses are dropped.
 */
export function activeHsms(hsms: readonly Hsm[]): Hsm[] {
  const seen = new Set<string>();
  const active: Hsm[] = [];
  for (const hsm of hsms) {
    if (
      hsm.state !== "ACTIVE" ||
      !hsm.eniIp ||
      !isIPv4(hsm.eniIp) ||
      seen.has(hsm.eniIp)
    ) {
      continue;
    }
    seen.add(hsm.eniIp);
    active.push(hsm);
  }
  return active.sort((left, right) => compareIpv4(left.eniIp!, right.eniIp!));
}

/** Counts HSMs by state, for messages such as "no ACTIVE HSM (2 DEGRADED, 1 CREATE_IN_PROGRESS)". */
export function summarizeStates(hsms: readonly Hsm[]): string {
  const counts = new Map<string, number>();
  for (const hsm of hsms) {
    counts.set(hsm.state, (counts.get(hsm.state) ?? 0) + 1);
  }
  if (counts.size === 0) {
    return "the cluster has no HSMs";
  }
  return [...counts].map(([state, count]) => `${count} ${state}`).join(", ");
}
