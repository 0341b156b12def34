using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;

namespace Conveyor.Tests.Faults;

/// <summary>
/// Clients submitting charge-payment jobs to the Api, each with a fresh PaymentId, one per request
/// or <see cref="BatchSize"/> per request to <c>/batch</c>. Records which payments were accepted (a
/// 202, or a job answered with its id in a batch's partial answer) and how every answer went (per
/// request); a refused job is not retried.
/// </summary>
/// <param name="batchSize">Jobs per request: 1 posts to <c>/api/jobs/charge-payment</c>, more to its <c>/batch</c>.</param>
public sealed class JobSubmissions(int batchSize = 1)
{
    private readonly ConcurrentDictionary<Guid, byte> _accepted = new();
    private readonly ConcurrentDictionary<string, int> _outcomes = new();
    private readonly ConcurrentBag<double> _latenciesMs = [];

    public int BatchSize { get; } = batchSize;

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
    /// Submits <paramref name="jobs"/> requests (or until <paramref name="stop"/>), <paramref name="clients"/>
    /// at a time; with <paramref name="perSecond"/> jobs set, no faster than that in total.
    /// </summary>
    public async Task SubmitAsync(HttpClient api, int jobs, int clients, double? perSecond = null, CancellationToken stop = default)
    {
        var next = -1;
        var started = System.Diagnostics.Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, clients).Select(async _ =>
        {
            while (!stop.IsCancellationRequested && Interlocked.Increment(ref next) is var i && i < jobs)
            {
                if (perSecond is { } rate)
                {
                    // The wait is read once: read twice, the clock may pass the due time in between
                    // and hand Task.Delay a negative span (which throws).
                    var wait = TimeSpan.FromSeconds(i * (double)BatchSize / rate) - started.Elapsed;
                    if (wait > TimeSpan.Zero)
                    {
                        await Task.Delay(wait, CancellationToken.None);
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
        var paymentIds = Enumerable.Range(0, BatchSize).Select(_ => Guid.NewGuid()).ToArray();
        var charges = paymentIds.Select((paymentId, j) => new
        {
            paymentId,
            accountId = $"acct-{i % 31}",
            amountMinor = 100 + (i * BatchSize) + j,
            currency = "EUR",
        }).ToArray();
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        string outcome;
        try
        {
            using var response = BatchSize == 1
                ? await api.PostAsJsonAsync(new Uri("/api/jobs/charge-payment", UriKind.Relative), charges[0])
                : await api.PostAsJsonAsync(new Uri("/api/jobs/charge-payment/batch", UriKind.Relative), new { jobs = charges });
            if (response.StatusCode == HttpStatusCode.Accepted)
            {
                foreach (var paymentId in paymentIds)
                {
                    _accepted.TryAdd(paymentId, 0);
                }
            }
            else if (BatchSize > 1 && await AcceptedOfPartialAnswerAsync(response) is { } indexes)
            {
                foreach (var index in indexes)
                {
                    _accepted.TryAdd(paymentIds[index], 0);
                }
            }

            outcome = ((int)response.StatusCode).ToString(CultureInfo.InvariantCulture);
        }
        // An answer-less submission (the Api is being killed): not recorded as accepted.
        catch (Exception exception) when (HttpNoAnswer.Is(exception))
        {
            outcome = exception.GetType().Name;
        }

        _outcomes.AddOrUpdate(outcome, 1, (_, n) => n + 1);
        _latenciesMs.Add(System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds);
    }

    /// <summary>The places of the jobs a batch's problem answer reports accepted (with a job id); null when it lists none.</summary>
    private static async Task<List<int>?> AcceptedOfPartialAnswerAsync(HttpResponseMessage response)
    {
        if (response.Content.Headers.ContentType?.MediaType != "application/problem+json")
        {
            return null;
        }

        var problem = await response.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>();
        return problem.TryGetProperty("jobs", out var jobs)
            ? [.. jobs.EnumerateArray().Where(j => j.TryGetProperty("jobId", out _)).Select(j => j.GetProperty("index").GetInt32())]
            : null;
    }
}
