// Fails the run on any unhandled promise rejection, in the test process or code it loads.
process.on("unhandledRejection", (reason) => {
  throw reason instanceof Error
    ? reason
    : new Error(`unhandled rejection: ${String(reason)}`);
});
