using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Per consumer, section <c>Consumers:&lt;Name&gt;</c> (env <c>Consumers__ChargePayment__PrefetchCount</c>, ...).
/// Prefetch bounds unacked messages held from the broker; the concurrency limit bounds handlers
/// in flight (and so database connections in use).
/// </summary>
public sealed class ConsumerEndpointOptions
{
    public const string SectionName = "Consumers";

    [Range(1, 10_000)]
    public int PrefetchCount { get; set; } = 32;

    [Range(1, 1_000)]
    public int ConcurrentMessageLimit { get; set; } = 16;

    /// <summary>In-memory retries for transient failures (0 = none).</summary>
    [Range(0, 20)]
    public int RetryLimit { get; set; } = 3;

    [Range(1, 60_000)]
    public int RetryMinIntervalMilliseconds { get; set; } = 200;

    [Range(1, 120_000)]
    public int RetryMaxIntervalMilliseconds { get; set; } = 2_000;

    [Range(1, 60_000)]
    public int RetryIntervalDeltaMilliseconds { get; set; } = 300;

    /// <summary>Delayed redeliveries (through the PostgreSQL store) after in-memory retries; 0 = none.</summary>
    [Range(0, 50)]
    public int RedeliveryLimit { get; set; } = 4;

    /// <summary>The first redelivery's delay; each next one is <see cref="RedeliveryFactor"/> times longer.</summary>
    [Range(1, 86_400_000)]
    public int RedeliveryBaseDelayMilliseconds { get; set; } = 30_000;

    [Range(1.0, 100.0)]
    public double RedeliveryFactor { get; set; } = 4.5;

    /// <summary>No redelivery waits longer than this, jitter included (only a remote Retry-After may ask for longer).</summary>
    [Range(1, 86_400_000)]
    public int RedeliveryMaxDelayMilliseconds { get; set; } = 3_600_000;

    /// <summary>
    /// Each delay is spread by up to ± this fraction, so failed messages do not return in lockstep; the
    /// spread stops at <see cref="RedeliveryMaxDelayMilliseconds"/>, and a delay at that cap is spread
    /// only below it.
    /// </summary>
    [Range(0.0, 1.0)]
    public double RedeliveryJitter { get; set; } = 0.2;

    /// <summary>
    /// Kill switch: when this percentage of the tracked messages fail transiently, the endpoint
    /// stops consuming for <see cref="KillSwitchRestartSeconds"/> (messages wait in the queue). 0 = off.
    /// </summary>
    [Range(0, 100)]
    public int KillSwitchTripPercent { get; set; } = 15;

    [Range(1, 100_000)]
    public int KillSwitchActivationThreshold { get; set; } = 20;

    [Range(1, 3_600)]
    public int KillSwitchTrackingPeriodSeconds { get; set; } = 60;

    [Range(1, 3_600)]
    public int KillSwitchRestartSeconds { get; set; } = 60;

    /// <summary>
    /// Whether the kill switch counts the remote side's transient failures (HTTP 408, 409, 421, 425, 429, 5xx, timeouts,
    /// connection errors) or only the worker's own database being unavailable. True for an endpoint whose
    /// remote side is one service (the payment gateway): its outage is every message's. False by default
    /// for <c>DeliverWebhook</c>, whose messages go to many customers' receivers through one queue: one
    /// receiver failing must not pause the deliveries to all the others.
    /// </summary>
    public bool KillSwitchCountsRemoteFailures { get; set; } = true;

    /// <summary>At most this many messages per second through this endpoint (per worker); 0 = unlimited.</summary>
    [Range(0, 100_000)]
    public int RateLimitPerSecond { get; set; }

    /// <summary>Larger bodies go straight to <c>_error</c> (the Api accepts at most 256 KiB).</summary>
    [Range(1_024, 134_217_728)]
    public long MaxMessageBytes { get; set; } = 1_048_576;

    /// <summary>
    /// Messages whose AMQP header table takes more bytes go straight to <c>_error</c>. Headers travel in
    /// one frame (RabbitMQ's <c>frame_max</c>, 131,072 bytes by default), and a redelivery or the move to
    /// <c>_error</c> adds a few KiB to them, so keep this well under the frame size.
    /// </summary>
    [Range(1_024, 1_048_576)]
    public int MaxHeaderBytes { get; set; } = 65_536;

    /// <summary>
    /// Short jobs: at most this many messages share one inbox transaction (group commit, ADR 0004);
    /// batches form from the messages that arrive while earlier ones are being handled, so a
    /// lone message is not delayed. 1 = one transaction per message.
    /// </summary>
    [Range(1, 1_000)]
    public int InboxBatchSize { get; set; } = 64;

    /// <summary>Short jobs: inbox batches in flight at once (each holds one database connection).</summary>
    [Range(1, 100)]
    public int InboxConcurrentBatches { get; set; } = 4;

    /// <summary>
    /// Short jobs: while fewer inbox batches than this are in flight, a batch starts as soon as a
    /// message waits. Beyond it, a batch starts once it is full, while no batch in flight is busy in
    /// the database, or after <see cref="Inbox.InboxBatcher.DefaultGatherLimit"/> (20 ms), so that
    /// under load batches grow instead of multiplying.
    /// </summary>
    [Range(1, 100)]
    public int InboxEagerBatches { get; set; } = 1;

    /// <summary>
    /// Short jobs: the inbox batch's statements are planned once per database connection (PostgreSQL's
    /// generic plans), with sequential scans off in the batch's transaction, instead of on every execution
    /// (ADR 0010's amendment): about a quarter less PostgreSQL CPU per message. false plans them on every
    /// execution, as every other statement.
    /// </summary>
    public bool InboxGenericPlans { get; set; } = true;

    /// <summary>The longest <see cref="LeaseSeconds"/> allowed.</summary>
    public const int MostLeaseSeconds = 3_600;

    /// <summary>The largest <see cref="MaxLeaseDeferrals"/> allowed.</summary>
    public const int MostLeaseDeferrals = 100_000;

    /// <summary>Long jobs only: how long a claimed lease lives without a heartbeat.</summary>
    [Range(5, MostLeaseSeconds)]
    public int LeaseSeconds { get; set; } = 60;

    /// <summary>
    /// Long jobs only: how many times one copy of a command is parked because another worker holds its job's lease
    /// (<see cref="Redelivery.RedeliveryHeaders.Deferrals"/>); the next time it meets a lease it goes to <c>_error</c>
    /// (<see cref="Failures.LeaseDeferralsSpentException"/>), leaving the job to the run that holds the lease. A copy
    /// comes back about when the lease would lapse, and a live run renews it every third of <see cref="LeaseSeconds"/>,
    /// so each park lasts two thirds of a lease or more: 100 with the default 60 s lease is over an hour, longer
    /// than a run may hold its delivery (<c>RabbitMq:ConsumerTimeoutSeconds</c>, 1,800 s by default). Without a
    /// limit, a run that never ended (with no consumer_timeout to stop it) kept every other copy parked for ever.
    /// While <c>RabbitMq:ConsumerTimeoutSeconds</c> is set, the worker refuses to start when these parks could end
    /// sooner than that timeout (this × two thirds of <see cref="LeaseSeconds"/> below it, <see cref="ConsumerTimeoutValidator"/>):
    /// a duplicate copy would go to <c>_error</c> while the run it waits for is still within its time. With no consumer
    /// timeout (0) nothing bounds a run, so nothing is checked: giving up on a run that may never end is then the point.
    /// </summary>
    [Range(1, MostLeaseDeferrals)]
    public int MaxLeaseDeferrals { get; set; } = 100;
}
