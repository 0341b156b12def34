namespace Conveyor.Worker.Jobs;

/// <summary>
/// How a command maps to a job: its kind, the consumer that runs it (its options section under
/// <c>Consumers</c>) and its business idempotency key (the inbox key too). One per command type.
/// </summary>
public sealed class JobDescriptor<T>(string kind, string consumerName, Func<T, string> businessKey) where T : class
{
    public string Kind { get; } = kind;

    public string ConsumerName { get; } = consumerName;

    public string BusinessKey(T message) => businessKey(message);
}
