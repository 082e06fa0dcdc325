// Test classes run one after another in every test project: many tests seed torch's process-wide generator
// (torch.manual_seed) and the trainer re-seeds it every step for exact resume; run in parallel, their random draws
// would interleave and make results depend on scheduling (seen as rare failures). On 2 cores little is lost.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
