namespace Conveyor.Worker.Jobs;

/// <summary>
/// How a command maps to a job: its kind and its business idempotency key (the inbox key too).
/// Registered once per command type.
/// </summary>
public sealed class JobDescriptor<T>(string kind, Func<T, string> businessKey) where T : class
{
    public string Kind { get; } = kind;

    public string BusinessKey(T message) => businessKey(message);
}
