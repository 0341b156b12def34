using Conveyor.Worker.Failures;
using Conveyor.Worker.Messaging;

namespace Conveyor.Tests.Unit;

/// <summary>The reckoning of how long in-memory retries can hold a delivery unacked, against RabbitMQ's consumer_timeout.</summary>
public sealed class UnackedHoldTests
{
    [Theory]
    // The defaults: 200 + 300, 400 + 300, 800 + 300.
    [InlineData(3, 200, 2_000, 300, 2_300)]
    // Capped: 200 × (2^10 - 1) for the first ten, 120 s for the next ten, 300 ms of jitter on each.
    [InlineData(20, 200, 120_000, 300, 1_410_600)]
    // The jitter comes on top of the cap: each wait may exceed the maximum by it.
    [InlineData(3, 1_000, 1_000, 500, 4_500)]
    [InlineData(0, 200, 2_000, 300, 0)]
    public void The_waits_at_their_longest_are_every_capped_doubling_plus_the_whole_jitter(int retryLimit, int min, int max, int delta, double expectedMilliseconds)
    {
        var options = new ConsumerEndpointOptions
        {
            RetryLimit = retryLimit,
            RetryMinIntervalMilliseconds = min,
            RetryMaxIntervalMilliseconds = max,
            RetryIntervalDeltaMilliseconds = delta,
        };

        Assert.Equal(expectedMilliseconds, RetryIntervals.From(options).WorstCaseTotal().TotalMilliseconds, 6);
    }

    [Fact]
    public void No_drawn_wait_exceeds_the_longest_reckoned()
    {
        var intervals = new RetryIntervals(5, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(1), TimeSpan.FromMilliseconds(300));
        var random = new Random(42);

        for (var draw = 0; draw < 1_000; draw++)
        {
            var retry = random.Next(0, 5);
            Assert.InRange(intervals.Interval(retry, random.NextDouble()), TimeSpan.Zero, intervals.Interval(retry, 1));
        }

        Assert.Equal(TimeSpan.FromMilliseconds(1_300), intervals.Interval(4, 1));
    }

    [Fact]
    public void A_delivery_is_held_through_every_attempt_to_its_timeout_and_the_handlings_ahead_of_it()
    {
        // The defaults, with a 10 s HTTP timeout: 4 × 10 s + 2.3 s, twice (32 prefetched, 16 at a time).
        var hold = UnackedHold.Of(new ConsumerEndpointOptions(), TimeSpan.FromSeconds(10));

        Assert.Equal((2, 4), (hold.Handlings, hold.Attempts));
        Assert.Equal(42.3, hold.Handling.TotalSeconds, 6);
        Assert.Equal(84.6, hold.Total.TotalSeconds, 6);
    }

    [Theory]
    [InlineData(32, 16, 2)]
    [InlineData(33, 16, 3)]
    [InlineData(1, 16, 1)]
    [InlineData(2, 1, 2)]
    [InlineData(16, 16, 1)]
    public void Handlings_are_the_prefetch_over_the_concurrency_rounded_up(int prefetch, int concurrency, int handlings)
    {
        var options = new ConsumerEndpointOptions { PrefetchCount = prefetch, ConcurrentMessageLimit = concurrency };

        Assert.Equal(handlings, UnackedHold.Of(options, TimeSpan.Zero).Handlings);
    }

    [Fact]
    public void A_reports_run_budget_is_the_timeout_shared_by_every_run_one_delivery_can_wait_through()
    {
        var timeout = TimeSpan.FromSeconds(1_800);
        // The report defaults: 2 prefetched, 1 at a time, 3 retries: 8 runs and 2 × 2.3 s of waits.
        var defaults = UnackedHold.Of(new ConsumerEndpointOptions { PrefetchCount = 2, ConcurrentMessageLimit = 1 }, TimeSpan.Zero);
        var alone = UnackedHold.Of(new ConsumerEndpointOptions { PrefetchCount = 1, ConcurrentMessageLimit = 1, RetryLimit = 0 }, TimeSpan.Zero);
        var waitsOnly = UnackedHold.Of(new ConsumerEndpointOptions { RetryLimit = 20, RetryMaxIntervalMilliseconds = 120_000 }, TimeSpan.Zero);

        Assert.Equal(224.425, defaults.AttemptBudget(timeout).TotalSeconds, 6);
        Assert.Equal(timeout, alone.AttemptBudget(timeout));
        Assert.Equal(TimeSpan.Zero, waitsOnly.AttemptBudget(timeout));
    }
}
