using System.Diagnostics.Metrics;

namespace Conveyor.Worker.Inbox;

internal static class InboxMetrics
{
    public const string MeterName = "Conveyor.Worker";

    private static readonly Meter Meter = new(MeterName);

    public static readonly Counter<long> DuplicatesSkipped =
        Meter.CreateCounter<long>("conveyor.inbox.duplicates_skipped", description: "Messages the inbox recognised as already applied");
}
