import {
  Observable,
  type ConfigurationOptions,
  type ObservableMiddleware,
} from "@kubernetes/client-node";

/**
 * Builds per-request options that attach an abort signal. The object-parameter API classes of
 * client-node 1.4 take Observable-style middleware, and "append" keeps the configured
 * authentication in place.
 */
export function abortOptions(
  signal: AbortSignal,
): ConfigurationOptions<ObservableMiddleware> {
  const setSignal: ObservableMiddleware = {
    pre: (context) => {
      context.setSignal(signal);
      return new Observable(Promise.resolve(context));
    },
    post: (response) => new Observable(Promise.resolve(response)),
  };
  return { middleware: [setSignal], middlewareMergeStrategy: "append" };
}
