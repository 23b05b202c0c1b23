import { describe, expect, it } from "vitest";

import type { ClusterSnapshot, Hsm } from "../src/discovery/types.js";
import {
  activeHsms,
  compareIpv4,
  summarizeStates,
} from "../src/injection/addresses.js";
import {
  CONFIG_FORMATS,
  HSM_PORT,
  renderConfig,
  type RenderedCluster,
} from "../src/injection/render.js";

const CA_FILE = "/opt/cloudhsm/etc/customerCA.crt";
const CLUSTER_ID = "cluster-jxhlf7644ne";
const OTHER_CLUSTER_ID = "cluster-abcdefghijk";

const HSMS: readonly Hsm[] = [
  {
    hsmId: "hsm-ccccccccccc",
    availabilityZone: "us-east-1c",
    eniIp: "10.0.12.5",
    state: "ACTIVE",
  },
  {
    hsmId: "hsm-aaaaaaaaaaa",
    availabilityZone: "us-east-1a",
    eniIp: "10.0.2.40",
    state: "ACTIVE",
  },
  {
    hsmId: "hsm-bbbbbbbbbbb",
    availabilityZone: "us-east-1b",
    eniIp: "10.0.7.9",
    state: "DEGRADED",
  },
  { hsmId: "hsm-ddddddddddd", state: "CREATE_IN_PROGRESS" },
];

function snapshot(
  clusterId: string,
  hsms: readonly Hsm[],
  region = "us-east-1",
): ClusterSnapshot {
  return { clusterId, region, hsms, fetchedAt: 1_714_564_800_000 };
}

function cluster(clusterId: string, hsms: readonly Hsm[]): RenderedCluster {
  return { snapshot: snapshot(clusterId, hsms), active: activeHsms(hsms) };
}

function parse(config: string): unknown {
  return JSON.parse(config) as unknown;
}

describe("renderConfig sdk5", () => {
  it("renders single cluster", () => {
    const config = renderConfig([cluster(CLUSTER_ID, HSMS)], {
      format: "sdk5",
      hsmCaFile: CA_FILE,
    });

    expect(parse(config)).toEqual({
      clusters: [
        {
          type: "hsm1",
          cluster: {
            hsm_ca_file: CA_FILE,
            cluster_id: CLUSTER_ID,
            servers: [
              { hostname: "10.0.2.40", port: 2223, enable: true },
              { hostname: "10.0.12.5", port: 2223, enable: true },
            ],
          },
        },
      ],
      logging: { log_type: "term", log_level: "info" },
    });
  });

  it("renders one entry per cluster", () => {
    const other: Hsm[] = [
      { hsmId: "hsm-eeeeeeeeeee", eniIp: "172.31.4.20", state: "ACTIVE" },
    ];
    const config = parse(
      renderConfig(
        [cluster(CLUSTER_ID, HSMS), cluster(OTHER_CLUSTER_ID, other)],
        {
          format: "sdk5",
          hsmCaFile: CA_FILE,
        },
      ),
    ) as {
      clusters: { cluster: { cluster_id: string; servers: unknown[] } }[];
    };

    expect(config.clusters).toHaveLength(2);
    expect(config.clusters[0]?.cluster.cluster_id).toBe(CLUSTER_ID);
    expect(config.clusters[1]?.cluster.cluster_id).toBe(OTHER_CLUSTER_ID);
    expect(config.clusters[1]?.cluster.servers).toEqual([
      { hostname: "172.31.4.20", port: 2223, enable: true },
    ]);
  });

  it("uses the CA file for every cluster", () => {
    const config = parse(
      renderConfig(
        [cluster(CLUSTER_ID, HSMS), cluster(OTHER_CLUSTER_ID, HSMS)],
        {
          format: "sdk5",
          hsmCaFile: "/etc/ssl/bundle.pem",
        },
      ),
    ) as { clusters: { cluster: { hsm_ca_file: string } }[] };

    expect(config.clusters.map((entry) => entry.cluster.hsm_ca_file)).toEqual([
      "/etc/ssl/bundle.pem",
      "/etc/ssl/bundle.pem",
    ]);
  });

  it("renders empty server list", () => {
    const config = parse(
      renderConfig([cluster(CLUSTER_ID, [])], {
        format: "sdk5",
        hsmCaFile: CA_FILE,
      }),
    ) as { clusters: { cluster: { servers: unknown[] } }[] };

    expect(config.clusters[0]?.cluster.servers).toEqual([]);
  });
});

describe("renderConfig sdk3", () => {
  it("writes the first ACTIVE address", () => {
    const config = renderConfig([cluster(CLUSTER_ID, HSMS)], {
      format: "sdk3",
      hsmCaFile: CA_FILE,
    });

    expect(parse(config)).toEqual({
      server: { hostname: "10.0.2.40", port: 2223 },
    });
  });

  it("uses only the first cluster", () => {
    const other: Hsm[] = [
      { hsmId: "hsm-eeeeeeeeeee", eniIp: "10.0.0.1", state: "ACTIVE" },
    ];
    const config = renderConfig(
      [cluster(CLUSTER_ID, HSMS), cluster(OTHER_CLUSTER_ID, other)],
      { format: "sdk3", hsmCaFile: CA_FILE },
    );

    expect(parse(config)).toEqual({
      server: { hostname: "10.0.2.40", port: 2223 },
    });
  });

  it("writes empty hostname without HSMs", () => {
    const config = renderConfig([cluster(CLUSTER_ID, [])], {
      format: "sdk3",
      hsmCaFile: CA_FILE,
    });

    expect(parse(config)).toEqual({ server: { hostname: "", port: 2223 } });
  });
});

describe("renderConfig json", () => {
  it("lists every HSM with its state", () => {
    const config = renderConfig([cluster(CLUSTER_ID, HSMS)], {
      format: "json",
      hsmCaFile: CA_FILE,
    });

    expect(parse(config)).toEqual({
      clusters: [
        {
          clusterId: CLUSTER_ID,
          region: "us-east-1",
          hsms: [
            {
              hsmId: "hsm-aaaaaaaaaaa",
              availabilityZone: "us-east-1a",
              eniIp: "10.0.2.40",
              state: "ACTIVE",
            },
            {
              hsmId: "hsm-bbbbbbbbbbb",
              availabilityZone: "us-east-1b",
              eniIp: "10.0.7.9",
              state: "DEGRADED",
            },
            {
              hsmId: "hsm-ccccccccccc",
              availabilityZone: "us-east-1c",
              eniIp: "10.0.12.5",
              state: "ACTIVE",
            },
            {
              hsmId: "hsm-ddddddddddd",
              availabilityZone: null,
              eniIp: null,
              state: "CREATE_IN_PROGRESS",
            },
          ],
        },
      ],
    });
  });

  it("renders one entry per cluster", () => {
    const config = parse(
      renderConfig([cluster(CLUSTER_ID, HSMS), cluster(OTHER_CLUSTER_ID, [])], {
        format: "json",
        hsmCaFile: CA_FILE,
      }),
    ) as { clusters: { clusterId: string; hsms: unknown[] }[] };

    expect(config.clusters.map((entry) => entry.clusterId)).toEqual([
      CLUSTER_ID,
      OTHER_CLUSTER_ID,
    ]);
    expect(config.clusters[1]?.hsms).toEqual([]);
  });
});

describe("renderConfig determinism", () => {
  it.each(CONFIG_FORMATS)("renders %s the same for any HSM order", (format) => {
    const forward = renderConfig([cluster(CLUSTER_ID, HSMS)], {
      format,
      hsmCaFile: CA_FILE,
    });
    const reversed = renderConfig([cluster(CLUSTER_ID, [...HSMS].reverse())], {
      format,
      hsmCaFile: CA_FILE,
    });

    expect(reversed).toBe(forward);
  });

  it.each(CONFIG_FORMATS)("ends %s with one newline", (format) => {
    const config = renderConfig([cluster(CLUSTER_ID, HSMS)], {
      format,
      hsmCaFile: CA_FILE,
    });

    expect(config.endsWith("}\n")).toBe(true);
  });

  it("uses the CloudHSM port", () => {
    expect(HSM_PORT).toBe(2223);
  });
});

describe("activeHsms", () => {
  function hsm(eniIp: string | undefined, state = "ACTIVE", id = eniIp): Hsm {
    return eniIp === undefined
      ? { hsmId: `hsm-${String(id)}`, state }
      : { hsmId: `hsm-${String(id)}`, eniIp, state };
  }

  function ips(hsms: readonly Hsm[]): (string | undefined)[] {
    return activeHsms(hsms).map((entry) => entry.eniIp);
  }

  it("sorts addresses numerically", () => {
    expect(ips([hsm("10.0.12.5"), hsm("10.0.2.40")])).toEqual([
      "10.0.2.40",
      "10.0.12.5",
    ]);
  });

  it("sorts across octets", () => {
    const input = ["192.168.0.1", "10.1.0.0", "9.255.255.255", "10.0.255.255"];

    expect(ips(input.map((ip) => hsm(ip)))).toEqual([
      "9.255.255.255",
      "10.0.255.255",
      "10.1.0.0",
      "192.168.0.1",
    ]);
  });

  it.each([
    "CREATE_IN_PROGRESS",
    "DEGRADED",
    "DELETE_IN_PROGRESS",
    "DELETED",
    "active",
    "FUTURE_STATE",
  ])("drops %s HSMs", (state) => {
    expect(ips([hsm("10.0.2.40", state), hsm("10.0.3.1")])).toEqual([
      "10.0.3.1",
    ]);
  });

  it.each([
    ["missing", undefined],
    ["empty", ""],
    ["leading zero", "10.0.2.040"],
    ["octet out of range", "10.0.2.256"],
    ["three octets", "10.0.2"],
    ["surrounding space", " 10.0.2.40"],
    ["IPv6", "fd00::1"],
    ["hostname", "hsm.example.com"],
  ])("drops %s address", (_, eniIp) => {
    expect(ips([hsm(eniIp, "ACTIVE", "bad"), hsm("10.0.3.1")])).toEqual([
      "10.0.3.1",
    ]);
  });

  it("drops duplicate addresses", () => {
    const input = [
      hsm("10.0.2.40", "ACTIVE", "first"),
      hsm("10.0.2.40", "ACTIVE", "second"),
    ];

    expect(activeHsms(input).map((entry) => entry.hsmId)).toEqual([
      "hsm-first",
    ]);
  });

  it("keeps ACTIVE HSM sharing an address", () => {
    const input = [
      hsm("10.0.2.40", "DEGRADED", "old"),
      hsm("10.0.2.40", "ACTIVE", "new"),
    ];

    expect(activeHsms(input).map((entry) => entry.hsmId)).toEqual(["hsm-new"]);
  });

  it("returns empty list for no HSMs", () => {
    expect(activeHsms([])).toEqual([]);
  });

  it("leaves input unchanged", () => {
    const input = [hsm("10.0.12.5"), hsm("10.0.2.40")];
    const before = JSON.stringify(input);

    activeHsms(input);

    expect(JSON.stringify(input)).toBe(before);
  });
});

describe("compareIpv4", () => {
  it.each([
    ["10.0.2.40", "10.0.12.5", -1],
    ["10.0.12.5", "10.0.2.40", 1],
    ["10.0.2.40", "10.0.2.40", 0],
    ["9.255.255.255", "10.0.0.0", -1],
    ["255.255.255.255", "0.0.0.0", 1],
  ])("orders %s against %s", (left, right, sign) => {
    expect(Math.sign(compareIpv4(left, right))).toBe(sign);
  });
});

describe("summarizeStates", () => {
  it("counts HSMs by state", () => {
    const summary = summarizeStates([
      { hsmId: "hsm-1", state: "DEGRADED" },
      { hsmId: "hsm-2", state: "CREATE_IN_PROGRESS" },
      { hsmId: "hsm-3", state: "DEGRADED" },
    ]);

    expect(summary).toBe("2 DEGRADED, 1 CREATE_IN_PROGRESS");
  });

  it("reports a cluster without HSMs", () => {
    expect(summarizeStates([])).toBe("the cluster has no HSMs");
  });

  it("keeps unknown states", () => {
    expect(summarizeStates([{ hsmId: "hsm-1", state: "FUTURE_STATE" }])).toBe(
      "1 FUTURE_STATE",
    );
  });
});
