import { describe, expect, it } from "vitest";

import { MAX_PLAN_KEY_LENGTH, planKey } from "../src/admission/handler.js";

describe("planKey", () => {
  it("is the format for default options", () => {
    expect(planKey({ configFormat: "json" }, [])).toBe("json");
  });

  it("tells options apart", () => {
    const keys = [
      planKey({ configFormat: "json", configPath: "/etc/a.cfg" }, []),
      planKey({ configFormat: "json", containers: ["web"] }, []),
      planKey({ configFormat: "json" }, [2]),
      planKey({ configFormat: "json", containers: ["web", "init"] }, [2]),
    ];

    expect(new Set(keys).size).toBe(keys.length);
    expect(keys.every((key) => key !== undefined && key !== "json")).toBe(true);
  });

  it("is undefined for a long container list", () => {
    const containers = Array.from(
      { length: 100 },
      (_, index) => `${"c".repeat(MAX_PLAN_KEY_LENGTH / 50)}-${index}`,
    );

    expect(planKey({ configFormat: "json", containers }, [])).toBeUndefined();
  });
});
