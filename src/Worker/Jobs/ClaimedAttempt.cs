using MassTransit;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// The attempt of its job that a delivery's latest claim counted, kept on the receive context so that
/// the filters outside the message scope (redelivery, job outcome) write the status of that attempt
/// only: a copy whose failure path is slow must not overwrite what a newer attempt (another copy,
/// or a run that took its lease over) has written since. Each inbox claim (and each in-memory retry's)
/// sets it; null until one counted. An in-memory retry that fails before its own claim keeps the
/// number of the delivery's earlier attempt: the job is still at that attempt unless another delivery
/// claimed one since, and its failure is then this delivery's to record (left null, the job read
/// <c>running</c> for ever while its message sat in <c>_error</c>).
/// </summary>
public sealed class ClaimedAttempt
{
    private int? _number;

    public static int? Of(ConsumeContext context) =>
        context.ReceiveContext.TryGetPayload<ClaimedAttempt>(out var attempt) ? attempt._number : null;

    public static void Set(ConsumeContext context, int? number) =>
        context.ReceiveContext.GetOrAddPayload(() => new ClaimedAttempt())._number = number;
}
