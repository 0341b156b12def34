using System.ComponentModel.DataAnnotations;

namespace Conveyor.ServiceDefaults;

/// <summary>Where the broker is. Environment variables: <c>RabbitMq__Host</c>, <c>RabbitMq__Port</c>, ...</summary>
public sealed class RabbitMqOptions : IValidatableObject
{
    public const string SectionName = "RabbitMq";

    [Required]
    public string Host { get; set; } = "127.0.0.1";

    [Range(1, 65535)]
    public int Port { get; set; } = 5672;

    [Required]
    public string VirtualHost { get; set; } = "/";

    [Required]
    public string Username { get; set; } = "guest";

    /// <summary>From the environment or a secret store only.</summary>
    [Required]
    public string Password { get; set; } = "guest";

    /// <summary>HTTP port of the management plugin (queue depths, error-queue operations).</summary>
    [Range(1, 65535)]
    public int ManagementPort { get; set; } = 15672;

    /// <summary>
    /// Where the management plugin is when <c>http://Host:ManagementPort/</c> does not reach it: over TLS, or
    /// published under a path (an ingress at <c>https://ops.example.com/rabbitmq/</c>). An absolute http or
    /// https URL of the management UI, with or without a trailing slash; the Api's requests go to
    /// <c>api/...</c> under it (<see cref="ManagementApiAddress"/>). No query, fragment or credentials:
    /// <see cref="Username"/> and <see cref="Password"/> sign in. Unset: <see cref="Host"/> and <see cref="ManagementPort"/>.
    /// </summary>
    public string? ManagementUrl { get; set; }

    /// <summary>The configuration key of <see cref="ManagementUrl"/>, as its validation errors name it.</summary>
    public const string ManagementUrlSetting = SectionName + ":" + nameof(ManagementUrl);

    /// <summary>
    /// The base address of the management HTTP API: <c>api/</c> under <see cref="ManagementUrl"/> (the URL
    /// itself when it already ends in <c>/api</c>), else
    /// <c>http://Host:ManagementPort/api/</c>. It ends in a slash, so that a relative request
    /// (<c>queues/vhost</c>) resolves under it instead of replacing its last segment.
    /// </summary>
    public Uri ManagementApiAddress()
    {
        // UriBuilder puts an IPv6 literal (::1) in brackets; written into the URL as it is, it made an invalid URI.
        var root = string.IsNullOrWhiteSpace(ManagementUrl)
            ? new UriBuilder(Uri.UriSchemeHttp, Host, ManagementPort).Uri
            : new Uri(ManagementUrl.Trim(), UriKind.Absolute);
        if (!root.AbsolutePath.EndsWith('/'))
        {
            root = new Uri(root.GetLeftPart(UriPartial.Path) + "/", UriKind.Absolute);
        }

        // The API's own address given for the UI's (the URL its documentation shows): not api/api/.
        return root.AbsolutePath.EndsWith("/api/", StringComparison.OrdinalIgnoreCase) ? root : new Uri(root, "api/");
    }

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        // The value is not repeated in the message: it may hold a password.
        if (ManagementUrlProblem(ManagementUrl) is { } problem)
        {
            yield return new ValidationResult($"{ManagementUrlSetting} {problem}", [nameof(ManagementUrl)]);
        }

        // A URL (amqp://rabbit, http://rabbit:5672) or a name with a space or a line break in it: the bus built its
        // address from it and stopped the worker with "Invalid URI: The hostname could not be parsed.", naming no setting.
        if (!string.IsNullOrEmpty(Host) && Uri.CheckHostName(Host) == UriHostNameType.Unknown)
        {
            yield return new ValidationResult(
                $"{SectionName}:{nameof(Host)} must be a host name or an IP address (such as rabbitmq.internal or 10.0.0.5), not a URL: "
                + $"its port is {SectionName}:{nameof(Port)}, its virtual host {SectionName}:{nameof(VirtualHost)}.",
                [nameof(Host)]);
        }
    }

    private static string? ManagementUrlProblem(string? url)
    {
        if (string.IsNullOrWhiteSpace(url))
        {
            return null;
        }

        // On Unix a path alone ("/rabbitmq") parses as an absolute file: URI, hence the scheme check.
        if (!Uri.TryCreate(url.Trim(), UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            return "must be an absolute http or https URL of the management plugin, such as https://ops.example.com/rabbitmq/.";
        }

        if (uri.UserInfo.Length > 0)
        {
            return "must not carry credentials: RabbitMq:Username and RabbitMq:Password sign in to the management API.";
        }

        return uri.Query.Length > 0 || uri.Fragment.Length > 0 || url.Contains('?', StringComparison.Ordinal) || url.Contains('#', StringComparison.Ordinal)
            ? "must not have a query or a fragment: the Api appends the management API's paths to it."
            : null;
    }

    /// <summary>
    /// Names this process in the broker: its connections show as <c>conveyor-worker (name)</c> in the
    /// management UI and in <c>rabbitmqctl list_connections client_properties</c>, so an operator can
    /// tell which pod holds a consumer. Default: the host name (the pod's name on Kubernetes).
    /// </summary>
    [MaxLength(200)]
    public string? InstanceName { get; set; }

    /// <summary>The name a connection of <paramref name="component"/> gives the broker: the component and <see cref="InstanceName"/>.</summary>
    public string ClientName(string component) =>
        $"{component} ({(string.IsNullOrWhiteSpace(InstanceName) ? Environment.MachineName : InstanceName.Trim())})";

    /// <summary>Seconds to wait for a connection or a publisher confirm before giving up.</summary>
    [Range(1, 300)]
    public int ConnectTimeoutSeconds { get; set; } = 5;

    /// <summary>
    /// The broker's <c>consumer_timeout</c>, in seconds (RabbitMQ's default: 1800): a consumer that holds a
    /// delivery unacked longer has its channel closed, and every delivery on it goes back to the queue.
    /// Stated here, not set: keep it equal to the broker's. 0 = the broker has none.
    /// </summary>
    [Range(0, 31_536_000)]
    public int ConsumerTimeoutSeconds { get; set; } = 1_800;

    /// <summary>
    /// The worker refuses to start when its in-memory retries could hold a delivery unacked for this
    /// percentage of <see cref="ConsumerTimeoutSeconds"/> or more (the rest is margin for what the
    /// reckoning leaves out, such as database time).
    /// </summary>
    [Range(1, 100)]
    public int MaxRetryHoldPercent { get; set; } = 50;

    /// <summary>
    /// Declare the job queues as quorum queues (replicated; for a clustered RabbitMQ). Decide before
    /// the first deployment: RabbitMQ cannot change the type of an existing queue.
    /// </summary>
    public bool QuorumQueues { get; set; }

    /// <summary>
    /// Deliveries a quorum job queue allows one message (<c>x-delivery-limit</c>) before it dead-letters
    /// it into the queue's <c>_error</c> queue, at least once (<see cref="QuorumJobQueueArguments"/>).
    /// Retries happen in the consumer or as new publishes, so only returns count: a consumer that stops
    /// or crashes with the message unacknowledged, and a requeue while the database is away. RabbitMQ
    /// 4.0 gives quorum queues a limit of 20 and no dead-letter route: a message requeued that often
    /// during a long database outage was dropped. High, so an outage is waited out; still a bound on
    /// a message that crashes every worker it reaches.
    /// </summary>
    [Range(1, int.MaxValue)]
    public int QuorumDeliveryLimit { get; set; } = 1000;

    /// <summary>
    /// Declare the classic job queues in lazy mode (<c>x-queue-mode=lazy</c>; MassTransit gives their
    /// <c>_error</c> and <c>_skipped</c> queues the same arguments): the broker keeps their messages
    /// on disk instead of in its memory. On RabbitMQ 3.10/3.11 a classic queue holding thousands of
    /// messages otherwise stalls its publishers' confirms for tens of milliseconds at a time, and a
    /// backlog (workers down, error queues filling) uses broker memory up to the memory alarm, which
    /// blocks every publisher. RabbitMQ 3.12 and later ignore the argument (their classic queues
    /// always behave so); quorum queues do not take it. RabbitMQ refuses to redeclare an existing
    /// queue in another mode (<c>PRECONDITION_FAILED</c>), so the worker declares a queue that
    /// already exists in the default mode as it is, with a warning (<c>QueueModeProbe</c>).
    /// </summary>
    public bool LazyQueues { get; set; } = true;

    /// <summary>The queue argument that selects a classic queue's mode, and its lazy value.</summary>
    public const string QueueModeArgument = "x-queue-mode";

    /// <inheritdoc cref="QueueModeArgument"/>
    public const string LazyQueueMode = "lazy";

    /// <summary>MassTransit's suffix for a receive queue's dead-letter queue (messages whose attempts are spent).</summary>
    public const string ErrorQueueSuffix = "_error";

    /// <summary>MassTransit's suffix for a receive queue's queue of messages no consumer understands.</summary>
    public const string SkippedQueueSuffix = "_skipped";

    /// <summary>
    /// The arguments the worker declares job queue <paramref name="queue"/> with; for tools and tests that
    /// declare such a queue before the worker does (the broker compares the arguments of every declaration).
    /// </summary>
    public Dictionary<string, object?>? JobQueueArguments(string queue) =>
        QuorumQueues ? QuorumJobQueueArguments(queue)
        : LazyQueues ? new() { [QueueModeArgument] = LazyQueueMode }
        : null;

    /// <summary>
    /// A quorum job queue: its type and <see cref="QuorumGuardArguments"/>. A message past the delivery
    /// limit goes to <c>queue_error</c> through the default exchange, dead-lettered at least once (the
    /// broker keeps it until the <c>_error</c> queue has confirmed it; that strategy needs
    /// <c>x-overflow=reject-publish</c>, which changes nothing for a queue without a length limit).
    /// </summary>
    public Dictionary<string, object?> QuorumJobQueueArguments(string queue) =>
        new(QuorumGuard(queue), StringComparer.Ordinal) { [QueueTypeArgument] = "quorum" };

    /// <summary>The delivery limit and dead-letter route of quorum job queue <paramref name="queue"/> (<see cref="QuorumDeliveryLimit"/>).</summary>
    public IEnumerable<KeyValuePair<string, object?>> QuorumGuard(string queue) =>
    [
        new(DeliveryLimitArgument, QuorumDeliveryLimit),
        new("x-dead-letter-exchange", string.Empty),
        new("x-dead-letter-routing-key", queue + ErrorQueueSuffix),
        new("x-dead-letter-strategy", "at-least-once"),
        new("x-overflow", "reject-publish"),
    ];

    /// <summary>The arguments of <see cref="QuorumGuard"/>: MassTransit copies a job queue's arguments to its <c>_error</c> and <c>_skipped</c> queues, which must not take them.</summary>
    public static readonly IReadOnlyList<string> QuorumGuardArguments = [.. new RabbitMqOptions().QuorumGuard(string.Empty).Select(argument => argument.Key)];

    /// <summary>The queue argument that selects a queue's type.</summary>
    public const string QueueTypeArgument = "x-queue-type";

    /// <summary>A quorum queue's delivery limit.</summary>
    public const string DeliveryLimitArgument = "x-delivery-limit";
}
