import { describe, expect, it } from "vitest";

import { MAX_REPEAT_KEY_LENGTH, RepeatLimiter } from "../src/log.js";

describe("RepeatLimiter", () => {
  it("mutes repeats within the interval", () => {
    let now = 0;
    const limiter = new RepeatLimiter(1000, () => now);

    const first = limiter.admit("lookup|timeout");
    const repeat = limiter.admit("lookup|timeout");
    now = 1000;
    const later = limiter.admit("lookup|timeout");

    expect(first).toBe(0);
    expect(repeat).toBeUndefined();
    expect(later).toBe(1);
  });

  it("keeps distinct keys apart", () => {
    const limiter = new RepeatLimiter(1000, () => 0);

    expect(limiter.admit("a")).toBe(0);
    expect(limiter.admit("b")).toBe(0);
  });

  it("counts long keys by their prefix", () => {
    const limiter = new RepeatLimiter(1000, () => 0);
    const prefix = "n".repeat(MAX_REPEAT_KEY_LENGTH);

    const first = limiter.admit(`${prefix}${"x".repeat(100_000)}`);
    const second = limiter.admit(`${prefix}${"y".repeat(100_000)}`);

    expect(first).toBe(0);
    expect(second).toBeUndefined();
  });
});
