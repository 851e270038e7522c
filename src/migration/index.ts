export {};
export { DefaultSwitchoverPolicy, StepwiseSwitchoverPolicy, TokenBucket, createBandwidthLimiter, policyAbortError, decisionNumbers } from './policy.js';
export type { SwitchoverPolicy, PolicySnapshot, Decision, DecisionAction, DecisionReason, DecisionNumbers, DefaultPolicyOptions, StepwisePolicyOptions, TokenBucketOptions } from './policy.js';
