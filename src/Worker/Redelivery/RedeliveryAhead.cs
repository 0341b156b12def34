using MassTransit;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Whether a delayed redelivery may still follow a delivery whose in-memory retries run out (a payload of
/// the consume context, set by <see cref="RedeliveryFilter{T}"/>, read by the in-memory retry): only then may
/// the retries end early to leave a remote side's long Retry-After to the redelivery. Worked out when a
/// failure asks for it, from the copy's sealed history (read once per delivery and kept on the receive
/// context) and the endpoint's redelivery limit.
/// </summary>
public sealed class RedeliveryAhead(Func<bool> allowed)
{
    private readonly Func<bool> _allowed = allowed;

    /// <summary>
    /// True when a redelivery may follow <paramref name="context"/>'s delivery; false where none can: its
    /// redeliveries are spent, or none is configured, or no redelivery filter stores one.
    /// </summary>
    public static bool Of(ConsumeContext context) => context.TryGetPayload(out RedeliveryAhead? ahead) && ahead._allowed();
}
