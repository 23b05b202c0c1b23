import { PassThrough } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  describeCluster,
  formatTable,
  runDescribeCommand,
  type ClusterDescription,
} from "../src/cli/describe.js";
import {
  buildCluster,
  buildHsm,
  startFakeCloudHsm,
  type FakeCloudHsm,
} from "./support/fake-cloudhsm.js";
// Sets static AWS credentials and turns off the instance metadata service for the SDK.
import "./support/webhook-harness.js";

const STATIC = "test/fixtures/inject/static-hsms.json";
const CLUSTER = "cluster-fixture2abcd";
const REGION = "us-east-1";

async function run(args: readonly string[]) {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = "";
  let err = "";
  stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
  stderr.on("data", (chunk: Buffer) => (err += chunk.toString()));
  const code = await runDescribeCommand(args, {}, { stdout, stderr });
  return { code, stdout: out, stderr: err };
}

describe("describe from a static file", () => {
  const flags = [
    `--cluster-id=${CLUSTER}`,
    `--region=${REGION}`,
    `--static-hsms=${STATIC}`,
  ];

  it("prints a table", async () => {
    const result = await run(flags);
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).toBe(
      [
        `Cluster ${CLUSTER} in us-east-1 (ACTIVE): pods get 10.0.2.40,10.0.12.5`,
        "",
        "HSM ID             AVAILABILITY ZONE  ENI IP      STATE     INJECTED",
        "hsm-fixturebbbbb3  us-east-1a         10.0.2.40   ACTIVE    yes",
        "hsm-fixtureaaaaa2  us-east-1b         10.0.12.5   ACTIVE    yes",
        "hsm-fixtureccccc4  us-east-1c         10.0.21.77  DEGRADED  no (state is DEGRADED)",
        "",
      ].join("\n"),
    );
  });

  it("prints JSON with -o json", async () => {
    const result = await run([...flags, "-o", "json"]);
    expect(result.code).toBe(0);
    const description = JSON.parse(result.stdout) as ClusterDescription;
    expect(description.fetchedAt).toMatch(/^\d{4}-\d{2}-\d{2}T/);
    expect({ ...description, fetchedAt: "" }).toEqual({
      clusterId: CLUSTER,
      region: REGION,
      clusterState: "ACTIVE",
      fetchedAt: "",
      injectedIps: ["10.0.2.40", "10.0.12.5"],
      hsms: [
        {
          hsmId: "hsm-fixturebbbbb3",
          availabilityZone: "us-east-1a",
          eniIp: "10.0.2.40",
          state: "ACTIVE",
          injected: true,
          reason: null,
        },
        {
          hsmId: "hsm-fixtureaaaaa2",
          availabilityZone: "us-east-1b",
          eniIp: "10.0.12.5",
          state: "ACTIVE",
          injected: true,
          reason: null,
        },
        {
          hsmId: "hsm-fixtureccccc4",
          availabilityZone: "us-east-1c",
          eniIp: "10.0.21.77",
          state: "DEGRADED",
          injected: false,
          reason: "state is DEGRADED",
        },
      ],
    });
  });

  it("says when no address would be injected", async () => {
    const result = await run([
      "--cluster-id=cluster-degraded2345",
      `--region=${REGION}`,
      `--static-hsms=${STATIC}`,
    ]);
    expect(result.code).toBe(0);
    expect(result.stdout.split("\n")[0]).toBe(
      "Cluster cluster-degraded2345 in us-east-1 (DEGRADED): no address would be injected",
    );
  });

  it("exits 1 for an unknown cluster", async () => {
    const result = await run([
      "--cluster-id=cluster-missing23456",
      `--region=${REGION}`,
      `--static-hsms=${STATIC}`,
    ]);
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toBe(
      "cloudhsm-webhook describe: ClusterNotFound: cluster cluster-missing23456 not found in us-east-1\n",
    );
  });

  it.each([
    [
      ["-o", "yaml", ...flags],
      'invalid --output "yaml": expected one of table, json',
    ],
    [[`--region=${REGION}`], "missing --cluster-id"],
    [[...flags, "extra"], 'unexpected argument "extra"'],
  ])("exits 2 for flags %j", async (args, message) => {
    const result = await run(args);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain(message);
  });
});

describe("describe against AWS", () => {
  let aws: FakeCloudHsm;

  beforeAll(async () => {
    aws = await startFakeCloudHsm({
      clusters: [
        buildCluster(CLUSTER, [
          buildHsm("hsm-awsaaaaaaaaa2", "ACTIVE", {
            EniIp: "10.0.12.5",
            AvailabilityZone: "us-east-1b",
          }),
          buildHsm("hsm-awsbbbbbbbbb3", "ACTIVE", {
            EniIp: "10.0.2.40",
            AvailabilityZone: "us-east-1a",
          }),
          buildHsm("hsm-awscccccccccc4", "ACTIVE", {
            EniIp: "10.0.2.40",
            AvailabilityZone: "us-east-1c",
          }),
          buildHsm("hsm-awsdddddddddd5", "CREATE_IN_PROGRESS", {
            EniIp: undefined,
            AvailabilityZone: "us-east-1a",
          }),
        ]),
      ],
    });
  });

  afterAll(async () => {
    await aws.close();
  });

  const flags = () => [
    `--cluster-id=${CLUSTER}`,
    `--region=${REGION}`,
    `--aws-endpoint=${aws.url}`,
  ];

  it("prints the table from DescribeClusters", async () => {
    const result = await run(flags());
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout.split("\n")).toEqual([
      `Cluster ${CLUSTER} in us-east-1 (ACTIVE): pods get 10.0.2.40,10.0.12.5`,
      "",
      "HSM ID              AVAILABILITY ZONE  ENI IP     STATE               INJECTED",
      "hsm-awsbbbbbbbbb3   us-east-1a         10.0.2.40  ACTIVE              yes",
      "hsm-awsaaaaaaaaa2   us-east-1b         10.0.12.5  ACTIVE              yes",
      "hsm-awscccccccccc4  us-east-1c         10.0.2.40  ACTIVE              no (ENI IP of another HSM)",
      "hsm-awsdddddddddd5  us-east-1a         -          CREATE_IN_PROGRESS  no (state is CREATE_IN_PROGRESS)",
      "",
    ]);
  });

  it.each([
    ["access-denied", "CloudHsmAccessDeniedException"],
    ["throttling", "ThrottlingException"],
    ["service-unavailable", "Http503"],
  ] as const)("exits 1 on %s", async (fault, code) => {
    aws.setFault(fault);
    try {
      const result = await run([...flags(), "--aws-timeout=2"]);
      expect(result.code).toBe(1);
      expect(result.stdout).toBe("");
      expect(result.stderr).toMatch(
        new RegExp(
          `^cloudhsm-webhook describe: ${code}: DescribeClusters for ${CLUSTER} in us-east-1 failed`,
        ),
      );
    } finally {
      aws.clearFaults();
    }
  });
});

describe("describeCluster", () => {
  it("explains each HSM left out", () => {
    const description = describeCluster({
      clusterId: CLUSTER,
      region: REGION,
      hsms: [
        { hsmId: "hsm-e", state: "ACTIVE", eniIp: "fd00::1" },
        { hsmId: "hsm-d", state: "ACTIVE" },
        { hsmId: "hsm-c", state: "DELETE_IN_PROGRESS", eniIp: "10.0.0.3" },
        { hsmId: "hsm-b", state: "ACTIVE", eniIp: "10.0.0.2" },
      ],
      fetchedAt: 0,
    });
    expect(description.hsms.map((row) => [row.hsmId, row.reason])).toEqual([
      ["hsm-b", null],
      ["hsm-c", "state is DELETE_IN_PROGRESS"],
      ["hsm-d", "no ENI IP"],
      ["hsm-e", "ENI IP is not IPv4"],
    ]);
    expect(formatTable(description)).toContain(
      "hsm-d   -                  -         ACTIVE              no (no ENI IP)",
    );
  });
});
