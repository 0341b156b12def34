using System.Diagnostics.Metrics;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// Requests refused with 429 for their client's allowance, as the counter <c>conveyor.api.rate_limited</c>
/// (Prometheus <c>conveyor_api_rate_limited_total</c>), tagged <c>kind</c>: <see cref="Submit"/> (a job submission,
/// <see cref="SubmissionRateLimiter"/>) or <see cref="Read"/> (<see cref="ReadRateLimiter"/>). A rising rate names a
/// client past its allowance, or an allowance set too low for the clients there are. Not a full queue's 429.
/// </summary>
public sealed class RateLimitRefusals
{
    public const string InstrumentName = "conveyor.api.rate_limited";
    public const string Submit = "submit";
    public const string Read = "read";

    private readonly Counter<long> _refused;

    public RateLimitRefusals(IMeterFactory meters)
    {
        _refused = meters.Create(ApiApp.ApiMeterName).CreateCounter<long>(InstrumentName, unit: "{request}",
            description: "Requests refused with 429 because their client had used its allowance (kind=submit|read)");
        // At 0 from the first request (which makes this): a rate over a series that appears with its first refusal misses that refusal.
        _refused.Add(0, new KeyValuePair<string, object?>("kind", Submit));
        _refused.Add(0, new KeyValuePair<string, object?>("kind", Read));
    }

    /// <param name="kind"><see cref="Submit"/> or <see cref="Read"/>.</param>
    internal void Refused(string kind) => _refused.Add(1, new KeyValuePair<string, object?>("kind", kind));
}
