using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;

namespace Conveyor.Tests.Faults;

/// <summary>
/// Clients submitting charge-payment jobs to the Api, each with a fresh PaymentId. Records which
/// payments were accepted (202) and how every other answer went; a refused job is not retried.
/// </summary>
public sealed class JobSubmissions
{
    private readonly ConcurrentDictionary<Guid, byte> _accepted = new();
    private readonly ConcurrentDictionary<string, int> _outcomes = new();
    private readonly ConcurrentBag<double> _latenciesMs = [];

    public IReadOnlyCollection<Guid> Accepted => [.. _accepted.Keys];

    public int AcceptedCount => _accepted.Count;

    public IReadOnlyDictionary<string, int> Outcomes => new Dictionary<string, int>(_outcomes);

    public int Count(string outcome) => _outcomes.GetValueOrDefault(outcome);

    public string Describe() =>
        string.Join(", ", _outcomes.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => $"{o.Key}: {o.Value}"));

    /// <summary>How long the answers took: median, 99th percentile and longest, in seconds.</summary>
    public string DescribeLatency()
    {
        var sorted = _latenciesMs.Order().ToArray();
        if (sorted.Length == 0)
        {
            return "no answers";
        }

        double At(double p) => sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Length) - 1, 0, sorted.Length - 1)] / 1000;
        return string.Create(CultureInfo.InvariantCulture, $"answer time p50 {At(0.5):0.000} s, p99 {At(0.99):0.000} s, max {sorted[^1] / 1000:0.0} s");
    }

    /// <summary>
    /// Submits <paramref name="jobs"/> jobs (or until <paramref name="stop"/>), <paramref name="clients"/>
    /// at a time; with <paramref name="perSecond"/> set, no faster than that in total.
    /// </summary>
    public async Task SubmitAsync(HttpClient api, int jobs, int clients, double? perSecond = null, CancellationToken stop = default)
    {
        var next = -1;
        var started = DateTime.UtcNow;
        await Task.WhenAll(Enumerable.Range(0, clients).Select(async _ =>
        {
            while (!stop.IsCancellationRequested && Interlocked.Increment(ref next) is var i && i < jobs)
            {
                if (perSecond is { } rate)
                {
                    var due = started + TimeSpan.FromSeconds(i / rate);
                    if (due > DateTime.UtcNow)
                    {
                        await Task.Delay(due - DateTime.UtcNow, CancellationToken.None);
                    }

                    if (stop.IsCancellationRequested)
                    {
                        return;
                    }
                }

                await SubmitOneAsync(api, i);
            }
        }));
    }

    private async Task SubmitOneAsync(HttpClient api, int i)
    {
        var paymentId = Guid.NewGuid();
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        string outcome;
        try
        {
            using var response = await api.PostAsJsonAsync(new Uri("/api/jobs/charge-payment", UriKind.Relative), new
            {
                paymentId,
                accountId = $"acct-{i % 31}",
                amountMinor = 100 + i,
                currency = "EUR",
            });
            if (response.StatusCode == HttpStatusCode.Accepted)
            {
                _accepted.TryAdd(paymentId, 0);
            }

            outcome = ((int)response.StatusCode).ToString(CultureInfo.InvariantCulture);
        }
        catch (Exception exception) when (exception is HttpRequestException or TaskCanceledException)
        {
            outcome = exception.GetType().Name;
        }

        _outcomes.AddOrUpdate(outcome, 1, (_, n) => n + 1);
        _latenciesMs.Add(System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }
}
