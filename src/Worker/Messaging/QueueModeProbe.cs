using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using MassTransit;
using MassTransit.RabbitMqTransport;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Decides, once at start-up, which of the worker's queues it may declare lazy
/// (<see cref="RabbitMqOptions.LazyQueues"/>): those that do not exist yet or already are lazy; not
/// those that exist in the broker's default mode, which the broker would refuse to redeclare
/// (<c>PRECONDITION_FAILED</c>): for a job queue that would keep the worker from consuming at all,
/// for an <c>_error</c> queue from dead-lettering. Such a queue is declared as it is, with a warning
/// that says how to make it lazy. Queues this worker cannot probe (the broker is down) are declared
/// lazy, as configured.
/// The <c>_error</c> and <c>_skipped</c> queues are classic queues whatever the job queues are
/// (<see cref="ConfigureErrorQueue"/>; ADR 0002: moves and peeks requeue the messages they keep), except
/// one that already exists as a quorum queue (declared so before), which is kept with a warning.
/// </summary>
/// <remarks>
/// Over AMQP the only way to learn a queue's arguments is to have the broker compare them: a passive
/// declaration says whether the queue exists (creating nothing), then a declaration with
/// <c>x-queue-mode=lazy</c> (and <c>x-queue-type=classic</c> for an <c>_error</c> or <c>_skipped</c>
/// queue) succeeds or is refused; refused for its type, a declaration as a quorum queue tells whether
/// it is one; a quorum job queue is declared with its delivery limit and dead-letter route
/// (<see cref="RabbitMqOptions.QuorumGuard"/>), and refused, as a plain quorum queue. Every job queue and its <c>_error</c> and <c>_skipped</c> queues are probed together, on one connection, the first time MassTransit
/// configures an endpoint: that configuration is synchronous, so start-up waits for the probe there,
/// once, before anything consumes. MassTransit declares the <c>_error</c> and <c>_skipped</c> queues
/// later, at their first message; <see cref="ConfigureErrorQueue"/> then only reads what was found.
/// </remarks>
public sealed partial class QueueModeProbe
{
    private const string QueueTypeArgument = RabbitMqOptions.QueueTypeArgument;
    private const string ClassicQueueType = "classic";
    private const string QuorumQueueType = "quorum";

    /// <summary>
    /// How long start-up keeps trying to reach the broker for the probe. Declaring the queues without
    /// knowing their modes could be refused by the broker for good (an existing default-mode or quorum
    /// queue), and MassTransit would retry that refusal forever while the process looked healthy.
    /// </summary>
    private static readonly TimeSpan UnreachableBudget = TimeSpan.FromSeconds(60);

    private static readonly Dictionary<string, object?> LazyArguments = new() { [RabbitMqOptions.QueueModeArgument] = RabbitMqOptions.LazyQueueMode };

    /// <summary>What an error queue is declared with when it is new: explicit, so neither a quorum job queue's arguments nor a vhost's default queue type decide.</summary>
    private static readonly Dictionary<string, object?> ClassicLazyArguments = new()
    {
        [QueueTypeArgument] = ClassicQueueType,
        [RabbitMqOptions.QueueModeArgument] = RabbitMqOptions.LazyQueueMode,
    };

    private static readonly Dictionary<string, object?> ClassicArguments = new() { [QueueTypeArgument] = ClassicQueueType };

    private static readonly Dictionary<string, object?> QuorumArguments = new() { [QueueTypeArgument] = QuorumQueueType };

    private readonly IOptions<RabbitMqOptions> _options;
    private readonly ILogger<QueueModeProbe> _logger;
    private readonly Lazy<Dictionary<string, QueueMode>> _modes;

    public QueueModeProbe(IOptions<RabbitMqOptions> options, ILogger<QueueModeProbe> logger)
    {
        _options = options;
        _logger = logger;
        _modes = new(ProbeAll, LazyThreadSafetyMode.ExecutionAndPublication);
    }

    private enum QueueMode
    {
        Missing,

        /// <summary>A classic queue that takes <c>x-queue-mode=lazy</c> (it is lazy already).</summary>
        Lazy,

        /// <summary>A classic queue in the broker's default mode.</summary>
        Default,

        /// <summary>A quorum queue (declared without <see cref="RabbitMqOptions.QuorumGuard"/>, when a job queue).</summary>
        Quorum,

        /// <summary>A quorum job queue that takes <see cref="RabbitMqOptions.QuorumJobQueueArguments"/> (it has them already).</summary>
        QuorumGuarded,
    }

    /// <summary>True when <paramref name="queue"/> may be declared with <c>x-queue-mode=lazy</c>.</summary>
    public bool MayDeclareLazy(string queue) => _modes.Value.GetValueOrDefault(queue) != QueueMode.Default;

    /// <summary>
    /// True when quorum job queue <paramref name="queue"/> may be declared with its delivery limit and
    /// dead-letter route (<see cref="RabbitMqOptions.QuorumGuard"/>): it is new or has them; not one an
    /// earlier version declared without them, which the broker would refuse to redeclare.
    /// </summary>
    public bool MayGuardQuorum(string queue) => _modes.Value.GetValueOrDefault(queue) != QueueMode.Quorum;

    /// <summary>
    /// For MassTransit's <c>_error</c> and <c>_skipped</c> queues, which copy every argument of their
    /// job queue (<c>x-queue-type=quorum</c> included): declares them as classic queues, lazy as the job
    /// queues are (or as <see cref="RabbitMqOptions.LazyQueues"/> says, for quorum job queues); an existing
    /// one in the type and mode it had at start-up. Reads the probe's findings only.
    /// </summary>
    public void ConfigureErrorQueue(IRabbitMqQueueBindingConfigurator settings)
    {
        // MassTransit names the _error (_skipped) exchange and queue alike.
        var found = _modes.IsValueCreated && settings is EntitySettings { ExchangeName: { } queue }
            ? _modes.Value.GetValueOrDefault(queue)
            : QueueMode.Missing;
        // Copied from a quorum job queue; a classic queue takes none of them, and an _error queue
        // dead-lettering into itself would be a loop.
        foreach (var argument in RabbitMqOptions.QuorumGuardArguments)
        {
            settings.SetQueueArgument(argument, null);
        }

        if (found == QueueMode.Quorum)
        {
            // Kept as it is (warned at start-up): the broker refuses to redeclare it as another type.
            settings.SetQueueArgument(QueueTypeArgument, QuorumQueueType);
            settings.SetQueueArgument(RabbitMqOptions.QueueModeArgument, null);
            return;
        }

        settings.SetQueueArgument(QueueTypeArgument, ClassicQueueType);
        switch (found)
        {
            case QueueMode.Default:
                // Null removes the argument (MassTransit's Lazy = false would write "default", which
                // the broker also finds inequivalent to none).
                settings.SetQueueArgument(RabbitMqOptions.QueueModeArgument, null);
                break;
            case QueueMode.Lazy:
                settings.SetQueueArgument(RabbitMqOptions.QueueModeArgument, RabbitMqOptions.LazyQueueMode);
                break;
            case QueueMode.Missing when _options.Value.QuorumQueues:
                // Nothing to copy from a quorum job queue: the mode is the setting's.
                settings.SetQueueArgument(RabbitMqOptions.QueueModeArgument, _options.Value.LazyQueues ? RabbitMqOptions.LazyQueueMode : null);
                break;
        }
    }

    // Start-up, on the host's thread: MassTransit's endpoint configuration is synchronous, so this is
    // the one place that waits for the asynchronous probe.
    private Dictionary<string, QueueMode> ProbeAll() => ProbeUntilReachedAsync().GetAwaiter().GetResult();

    private async Task<Dictionary<string, QueueMode>> ProbeUntilReachedAsync()
    {
        var broker = _options.Value;
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        for (var attempt = 1; ; attempt++)
        {
            var modes = new Dictionary<string, QueueMode>(StringComparer.Ordinal);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(broker.ConnectTimeoutSeconds));
            try
            {
                await ProbeAllAsync(broker, modes, timeout.Token);
                return modes;
            }
            catch (Exception exception) when (IsUnreachable(exception))
            {
                if (System.Diagnostics.Stopwatch.GetElapsedTime(started) >= UnreachableBudget)
                {
                    // The process ends; its supervisor (Kubernetes, systemd) starts it again.
                    throw new InvalidOperationException(
                        $"RabbitMQ could not be reached for {UnreachableBudget.TotalSeconds:0} s at start-up to read the queues' modes; the worker stops so that it is started again.",
                        exception);
                }

                LogProbeRetry(_logger, attempt, exception.Message);
                await Task.Delay(TimeSpan.FromSeconds(Math.Min(5, attempt)));
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // Reached, but something else failed: what was not probed counts as missing, declared
                // lazy as configured.
                LogNotProbed(_logger, exception);
                return modes;
            }
        }
    }

    private static bool IsUnreachable(Exception exception) =>
        exception is BrokerUnreachableException or AlreadyClosedException or OperationCanceledException or IOException or System.Net.Sockets.SocketException;

    private async Task ProbeAllAsync(RabbitMqOptions broker, Dictionary<string, QueueMode> modes, CancellationToken cancellationToken)
    {
        await using var connection = await broker.ConnectAsync("conveyor-worker-queue-probe", cancellationToken);
        foreach (var kind in JobKinds.All)
        {
            // Quorum job queues take no mode, but a delivery limit and a dead-letter route.
            modes[kind] = broker.QuorumQueues
                ? await ProbeQuorumAsync(connection, broker, kind, cancellationToken)
                : await ProbeAsync(connection, broker, kind, LazyArguments, cancellationToken);

            foreach (var queue in new[] { kind + RabbitMqOptions.ErrorQueueSuffix, kind + RabbitMqOptions.SkippedQueueSuffix })
            {
                modes[queue] = await ProbeAsync(connection, broker, queue, ClassicLazyArguments, cancellationToken);
            }

            var errorQueue = kind + RabbitMqOptions.ErrorQueueSuffix;
            if (broker.QuorumQueues && modes[errorQueue] == QueueMode.Missing)
            {
                // The broker dead-letters into it (the guard's route); MassTransit would declare it only
                // at the first fault, and until then a message past the limit would wait, unseen, in the
                // job queue. Declared as ConfigureErrorQueue declares a new one.
                await using var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
                await channel.QueueDeclareAsync(errorQueue, durable: true, exclusive: false, autoDelete: false,
                    broker.LazyQueues ? ClassicLazyArguments : ClassicArguments, cancellationToken: cancellationToken);
            }
        }
    }

    private async Task<QueueMode> ProbeAsync(
        IConnection connection, RabbitMqOptions broker, string queue, Dictionary<string, object?> lazy, CancellationToken cancellationToken)
    {
        if (!await ExistsAsync(connection, queue, cancellationToken))
        {
            return QueueMode.Missing;
        }

        await using (var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken))
        {
            try
            {
                await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, lazy, cancellationToken: cancellationToken);
                return QueueMode.Lazy;
            }
            catch (OperationInterruptedException exception)
                when (exception.ShutdownReason is { ReplyCode: 406 } reason && reason.ReplyText.Contains(RabbitMqOptions.QueueModeArgument, StringComparison.Ordinal))
            {
                LogKeptDefaultMode(_logger, queue, broker.VirtualHost);
                return QueueMode.Default;
            }
            catch (OperationInterruptedException exception)
                when (exception.ShutdownReason is { ReplyCode: 406 } reason && reason.ReplyText.Contains(QueueTypeArgument, StringComparison.Ordinal))
            {
                // Not a classic queue (the broker compares the type before the mode): a quorum one, as
                // an earlier version declared the error queues of quorum job queues, or the declaration
                // below fails too and nothing more is probed.
            }
        }

        await using var quorum = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        await quorum.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, QuorumArguments, cancellationToken: cancellationToken);
        LogKeptQuorum(_logger, queue, broker.VirtualHost);
        return QueueMode.Quorum;
    }

    /// <summary>A quorum job queue: new, declared with its guard already, or declared without it by an earlier version (kept, with a warning).</summary>
    private async Task<QueueMode> ProbeQuorumAsync(IConnection connection, RabbitMqOptions broker, string queue, CancellationToken cancellationToken)
    {
        if (!await ExistsAsync(connection, queue, cancellationToken))
        {
            return QueueMode.Missing;
        }

        await using (var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken))
        {
            try
            {
                await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, broker.QuorumJobQueueArguments(queue), cancellationToken: cancellationToken);
                return QueueMode.QuorumGuarded;
            }
            catch (OperationInterruptedException exception) when (exception.ShutdownReason is { ReplyCode: 406 })
            {
                // Other arguments (or another type, which MassTransit's own declaration will report).
            }
        }

        await using var plain = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        await plain.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, QuorumArguments, cancellationToken: cancellationToken);
        LogKeptUnguardedQuorum(_logger, queue, broker.VirtualHost, broker.QuorumDeliveryLimit);
        return QueueMode.Quorum;
    }

    private static async Task<bool> ExistsAsync(IConnection connection, string queue, CancellationToken cancellationToken)
    {
        // A passive declaration of a missing queue closes its channel, hence a channel of its own.
        await using var passive = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        return await passive.DeclarePassiveIfExistsAsync(queue, cancellationToken) is not null;
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Quorum queue {Queue} in vhost {VirtualHost} was declared without a delivery limit and dead-letter route; it is declared as it is. " +
        "On RabbitMQ 4.0 and later it drops a message delivered 20 times (each requeue while the database is away counts). To guard it: apply a policy with " +
        "delivery-limit={DeliveryLimit}, dead-letter-exchange=\"\", dead-letter-routing-key={Queue}_error, dead-letter-strategy=at-least-once and overflow=reject-publish, " +
        "or drain and delete it so that the worker declares it anew.")]
    private static partial void LogKeptUnguardedQuorum(ILogger logger, string queue, string virtualHost, int deliveryLimit);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Queue {Queue} in vhost {VirtualHost} exists in the broker's default mode, not lazy; it is declared as it is. " +
        "To make it lazy (ADR 0005): apply a policy with queue-mode=lazy to it, or drain and delete it so that the worker declares it anew; RabbitMq__LazyQueues=false silences this.")]
    private static partial void LogKeptDefaultMode(ILogger logger, string queue, string virtualHost);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Queue {Queue} in vhost {VirtualHost} is a quorum queue; error and skipped queues should be classic, since moves and peeks " +
        "requeue the messages they keep, which a quorum queue puts elsewhere and counts against its delivery limit (ADR 0002). It is declared as it is. To make it classic: " +
        "move its messages back or purge them, then delete it, and the worker declares it anew.")]
    private static partial void LogKeptQuorum(ILogger logger, string queue, string virtualHost);

    [LoggerMessage(Level = LogLevel.Warning, Message = "RabbitMQ could not be reached to read the queues' modes (attempt {Attempt}: {Reason}); start-up waits and tries again")]
    private static partial void LogProbeRetry(ILogger logger, int attempt, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not probe the job queues' modes; those not probed are declared lazy as configured")]
    private static partial void LogNotProbed(ILogger logger, Exception exception);
}
