using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// Logs a readiness check's changes of state, once each: a warning with the reason when it stops
/// being Healthy, an information line when it is again. ASP.NET Core's own line per failing probe
/// (an error every probe period through an outage) is filtered out in appsettings.json
/// (<c>Microsoft.Extensions.Diagnostics.HealthChecks</c>: <c>None</c>).
/// </summary>
internal sealed partial class HealthTransitions(ILogger<HealthTransitions> logger)
{
    private readonly Dictionary<string, HealthStatus> _last = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    public void Observe(HealthReport report)
    {
        foreach (var (name, entry) in report.Entries)
        {
            lock (_gate)
            {
                var previous = _last.GetValueOrDefault(name, HealthStatus.Healthy);
                _last[name] = entry.Status;
                if (previous == entry.Status)
                {
                    continue;
                }
            }

            if (entry.Status == HealthStatus.Healthy)
            {
                Recovered(logger, name);
            }
            else
            {
                Failing(logger, name, entry.Status, HealthExtensions.ReasonOf(entry) ?? "no reason given");
            }
        }
    }

    [LoggerMessage(EventId = 9001, Level = LogLevel.Warning, Message = "Health check {Check} is {Status}: {Reason}")]
    private static partial void Failing(ILogger logger, string check, HealthStatus status, string reason);

    [LoggerMessage(EventId = 9002, Level = LogLevel.Information, Message = "Health check {Check} is Healthy again")]
    private static partial void Recovered(ILogger logger, string check);
}
