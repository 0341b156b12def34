using System.Globalization;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage.Redelivery;
using Conveyor.Worker.Messaging;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Conveyor.Worker.Redelivery;

/// <summary>How one stored message's publish ended.</summary>
public enum PublishOutcome
{
    /// <summary>The broker confirmed it.</summary>
    Confirmed,

    /// <summary>The broker returned it (no such queue) or did not take it: worth another try later.</summary>
    Refused,

    /// <summary>
    /// The channel or connection failed under it: in a batch perhaps for another message's fault (the
    /// broker closes the whole connection for one bad frame), published alone for its own or the broker's.
    /// </summary>
    Failed,

    /// <summary>It can never be published as stored: unreadable headers, a property too long, refused for what it is.</summary>
    Unpublishable,

    /// <summary>
    /// Its publish was cut short (the caller's token cancelled: a timeout, a shutdown) before a confirm
    /// came: the broker may have taken it or not.
    /// </summary>
    Unsettled,
}

/// <summary>The outcome of one stored message's publish, and why when it was not confirmed.</summary>
public readonly record struct PublishResult(long Id, PublishOutcome Outcome, string? Error = null);

/// <summary>
/// Publishes stored messages straight to their queues (default exchange, persistent, mandatory)
/// on a dedicated channel with publisher confirms, so a row is deleted only after the broker has it.
/// Each message's publish has its own outcome: one that fails or is cut short never fails the
/// others' results, which a caller needs for the messages the broker did confirm.
/// </summary>
public sealed class BrokerPublisher(IOptions<RabbitMqOptions> options) : IAsyncDisposable
{
    /// <summary>The suffix of a queue's error queue, as MassTransit names it.</summary>
    public const string ErrorQueueSuffix = "_error";

    private readonly SemaphoreSlim _gate = new(1, 1);
    private IConnection? _connection;
    private IChannel? _channel;

    /// <summary>
    /// Publishes the messages together and waits for their confirms; one result per message, in order.
    /// Throws only when no channel can be had, before anything is published.
    /// </summary>
    public async Task<IReadOnlyList<PublishResult>> PublishAsync(IReadOnlyList<ScheduledMessage> messages, CancellationToken cancellationToken)
    {
        var (channel, frameMax) = await ChannelAsync(cancellationToken);
        return await Task.WhenAll(messages.Select(message =>
            PublishOneAsync(channel, frameMax, message, message.Destination, extraHeaders: null, alone: false, cancellationToken)));
    }

    /// <summary>
    /// Publishes one message with nothing else in flight, on a new channel if the last one closed: a
    /// failure is then this message's or the broker's, and one the broker blames on the message (a bad
    /// frame, a precondition) makes it <see cref="PublishOutcome.Unpublishable"/>.
    /// </summary>
    public async Task<PublishResult> PublishAloneAsync(ScheduledMessage message, CancellationToken cancellationToken)
    {
        var (channel, frameMax) = await ChannelAsync(cancellationToken);
        return await PublishOneAsync(channel, frameMax, message, message.Destination, extraHeaders: null, alone: true, cancellationToken);
    }

    /// <summary>
    /// Publishes a message that cannot go to its destination to the destination's <c>_error</c> queue
    /// instead, with <paramref name="reason"/> in the headers operators and the Api read; returned (not
    /// confirmed) when that queue does not exist yet. The copy says what it is and where it failed as the
    /// error pipe's copies do (DeadLetterHeadersFilter and MassTransit's fault headers): its job's
    /// <paramref name="jobKind"/>, the input address of the queue it was for (which an operator's move
    /// takes it back to), its contract, and this host.
    /// </summary>
    public async Task<PublishResult> MoveToErrorQueueAsync(
        ScheduledMessage message, string? jobKind, string reason, DateTimeOffset now, CancellationToken cancellationToken)
    {
        // A null value removes the stored header of that name (in any case).
        var headers = new Dictionary<string, string?>(StringComparer.Ordinal)
        {
            [MassTransit.MessageHeaders.Reason] = "fault",
            [MassTransit.MessageHeaders.FaultExceptionType] = "UnpublishableRedelivery",
            [MassTransit.MessageHeaders.FaultMessage] = reason,
            [MassTransit.MessageHeaders.FaultTimestamp] = now.ToString("O", CultureInfo.InvariantCulture),
            [MassTransit.MessageHeaders.FaultInputAddress] = InputAddressOf(message.Destination),
            [Failures.DeadLetterHeadersFilter.Reason] = $"the stored redelivery could not be published: {reason}",
            [MassTransit.MessageHeaders.FaultMessageType] = EnvelopeReader.MessageTypeOf(message.Body),
            // The kind the dispatcher found for the row (its job's, or its queue's); never a sender's.
            [Failures.DeadLetterHeadersFilter.JobKind] = jobKind,
            // The job's row id as the store found it, over the id the message claimed: an operator's move
            // by job id must find this job's command, as for any other dead-lettered job. A row of no job
            // keeps no job id nor attempts a sender claimed (as DeadLetterHeadersFilter forgets them):
            // left, the Api's listing showed another job's status beside the copy, and a move by that
            // job's id took it along.
            [JobHeaders.JobId] = message.JobId?.ToString("D"),
            // As the error pipe writes on every other _error copy of a job: its attempts as the failure
            // that stored this copy left them, which the Api's listing of the queue shows.
            [Failures.DeadLetterHeadersFilter.Attempts] = message.JobId is null ? null : message.JobAttempts?.ToString(CultureInfo.InvariantCulture),
        };
        foreach (var (name, value) in RedeliveryHistoryOf(message, now))
        {
            headers[name] = value;
        }

        foreach (var (name, value) in HostHeaders)
        {
            headers[name] = value;
        }

        var (channel, frameMax) = await ChannelAsync(cancellationToken);
        return await PublishOneAsync(channel, frameMax, message, message.Destination + ErrorQueueSuffix, headers, alone: true, cancellationToken);
    }

    /// <summary>
    /// The redelivery history the error pipe writes on every <c>_error</c> copy (the redeliveries the
    /// failed delivery had had, and when its first attempt failed), as it would for the delivery that
    /// stored <paramref name="message"/>. A redelivery the worker stored (attempt N) stands for the
    /// delivery N-1 that failed; the worker wrote its first failure time itself, over whatever the
    /// message came with. A row of attempt 0 (a job scheduled for later, a lease deferral) carries only
    /// what its sender sent, which no one checked here: its copy says what the pipe says of a delivery
    /// with no history it can trust, none, and failed first now.
    /// </summary>
    private static IEnumerable<KeyValuePair<string, string>> RedeliveryHistoryOf(ScheduledMessage message, DateTimeOffset now)
    {
        var firstFailureAt = message.Attempt > 0 ? StoredHeader(message, RedeliveryHeaders.FirstFailureAt) : null;
        yield return KeyValuePair.Create(RedeliveryHeaders.Attempt, Math.Max(0, message.Attempt - 1).ToString(CultureInfo.InvariantCulture));
        yield return KeyValuePair.Create(RedeliveryHeaders.FirstFailureAt, firstFailureAt ?? now.ToString("O", CultureInfo.InvariantCulture));
    }

    /// <summary>A stored header's value (its name matched ignoring case); null when absent or the headers are unreadable.</summary>
    private static string? StoredHeader(ScheduledMessage message, string name)
    {
        try
        {
            return JsonSerializer.Deserialize<Dictionary<string, string?>>(message.Headers)?
                .FirstOrDefault(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)).Value;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>
    /// The address a receive endpoint consuming <paramref name="queue"/> on this broker has, as MassTransit
    /// writes it in <c>MT-Fault-InputAddress</c> (<c>rabbitmq://host/vhost/queue</c>).
    /// </summary>
    internal string InputAddressOf(string queue)
    {
        var broker = options.Value;
        var host = new MassTransit.RabbitMqHostAddress(broker.Host, broker.Port, broker.VirtualHost);
        Uri address = new MassTransit.RabbitMqEndpointAddress(host, queue);
        return address.ToString();
    }

    /// <summary>MassTransit's <c>MT-Host-*</c> headers for this process, as on every copy its error pipe moves.</summary>
    private static readonly IReadOnlyList<KeyValuePair<string, string>> HostHeaders = HostHeadersOf(MassTransit.Metadata.HostMetadataCache.Host);

    private static List<KeyValuePair<string, string>> HostHeadersOf(MassTransit.HostInfo host) =>
    [
        .. new (string Name, string? Value)[]
        {
            (MassTransit.MessageHeaders.Host.MachineName, host.MachineName),
            (MassTransit.MessageHeaders.Host.ProcessName, host.ProcessName),
            (MassTransit.MessageHeaders.Host.ProcessId, host.ProcessId.ToString(CultureInfo.InvariantCulture)),
            (MassTransit.MessageHeaders.Host.Assembly, host.Assembly),
            (MassTransit.MessageHeaders.Host.AssemblyVersion, host.AssemblyVersion),
            (MassTransit.MessageHeaders.Host.MassTransitVersion, host.MassTransitVersion),
            (MassTransit.MessageHeaders.Host.FrameworkVersion, host.FrameworkVersion),
            (MassTransit.MessageHeaders.Host.OperatingSystemVersion, host.OperatingSystemVersion),
        }.Where(h => h.Value is not null).Select(h => KeyValuePair.Create(h.Name, h.Value!)),
    ];

    /// <param name="extraHeaders">
    /// Headers set over the stored ones of the same name in any case, never dropped, and stored ones
    /// removed (a null value); given for a move to <c>_error</c>, which also salvages what it can of a
    /// message that cannot be published as stored (see <see cref="Build"/>).
    /// </param>
    private static async Task<PublishResult> PublishOneAsync(
        IChannel channel,
        uint frameMax,
        ScheduledMessage message,
        string routingKey,
        IReadOnlyDictionary<string, string?>? extraHeaders,
        bool alone,
        CancellationToken cancellationToken)
    {
        if (Build(message, routingKey, extraHeaders, frameMax, out var properties) is { } problem)
        {
            return new(message.Id, PublishOutcome.Unpublishable, problem);
        }

        try
        {
            await channel.BasicPublishAsync(string.Empty, routingKey, mandatory: true, properties, message.Body, cancellationToken);
            return new(message.Id, PublishOutcome.Confirmed);
        }
        catch (PublishException exception)
        {
            return new(message.Id, PublishOutcome.Refused, exception.Message);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return new(message.Id, PublishOutcome.Unsettled);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            return new(message.Id, alone && BlamesTheMessage(exception) ? PublishOutcome.Unpublishable : PublishOutcome.Failed, exception.Message);
        }
    }

    /// <summary>
    /// The properties to publish <paramref name="message"/> with, its headers within what a frame of
    /// <paramref name="frameMax"/> holds (the largest dropped and named, see <see cref="OversizedHeaders"/>:
    /// rows stored before the store bounded them); or why it cannot be published at all. With
    /// <paramref name="extraHeaders"/> (a move to <c>_error</c>) nothing stored stops the copy: unreadable
    /// headers, header names and properties AMQP cannot carry are left out.
    /// </summary>
    private static string? Build(
        ScheduledMessage message, string routingKey, IReadOnlyDictionary<string, string?>? extraHeaders, uint frameMax, out BasicProperties properties)
    {
        var salvage = extraHeaders is not null;
        properties = new BasicProperties();
        Dictionary<string, string?>? stored;
        try
        {
            stored = JsonSerializer.Deserialize<Dictionary<string, string?>>(message.Headers);
        }
        catch (JsonException exception) when (!salvage)
        {
            return $"its stored headers are unreadable: {exception.Message}";
        }
        catch (JsonException)
        {
            stored = null;
        }

        var headers = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (key, value) in stored ?? [])
        {
            if (!salvage || AmqpFrame.IsShortString(key))
            {
                headers[key] = value;
            }
        }

        foreach (var (key, value) in extraHeaders ?? new Dictionary<string, string?>())
        {
            // A sender's copy of a header under another case would otherwise travel beside the one set here.
            foreach (var same in headers.Keys.Where(name => string.Equals(name, key, StringComparison.OrdinalIgnoreCase)).ToList())
            {
                headers.Remove(same);
            }

            if (value is not null)
            {
                headers[key] = value;
            }
        }

        properties.Headers = headers;
        properties.DeliveryMode = DeliveryModes.Persistent;
        properties.ContentType = salvage && !AmqpFrame.IsShortString(message.ContentType) ? null : message.ContentType;
        properties.MessageId = salvage && !AmqpFrame.IsShortString(message.MessageId) ? null : message.MessageId;
        var budget = AmqpFrame.ContentHeaderBudget(frameMax);
        OversizedHeaders.DropLargest(headers, budget - AmqpFrame.ContentHeaderBytes(properties) + AmqpFrame.TableBytes(headers), extraHeaders?.Keys.ToList());
        if (!AmqpFrame.IsShortString(routingKey))
        {
            return $"its destination '{routingKey[..Math.Min(routingKey.Length, 64)]}…' is longer than a routing key may be";
        }

        if (!AmqpFrame.IsShortString(properties.MessageId) || !AmqpFrame.IsShortString(properties.ContentType))
        {
            return "its message id or content type is longer than AMQP allows";
        }

        if (headers.Keys.FirstOrDefault(name => !AmqpFrame.IsShortString(name)) is { } longName)
        {
            return $"its header name '{longName[..Math.Min(longName.Length, 64)]}…' is longer than AMQP allows";
        }

        var bytes = AmqpFrame.ContentHeaderBytes(properties);
        return bytes > budget ? $"its properties take {bytes} bytes, more than a frame of {frameMax} holds" : null;
    }

    /// <summary>
    /// The broker closed the channel or connection for what was published (a frame it could not take,
    /// a precondition such as its size limit), or the client could not even write it: the same message
    /// will fail the same way every time.
    /// </summary>
    private static bool BlamesTheMessage(Exception exception) => exception switch
    {
        OperationInterruptedException { ShutdownReason.ReplyCode: Constants.FrameError or Constants.SyntaxError or Constants.UnexpectedFrame or Constants.PreconditionFailed or Constants.ContentTooLarge } => true,
        WireFormattingException or ArgumentException => true,
        _ => false,
    };

    /// <summary>
    /// Gives up the channel and its connection without waiting: the next publish opens new ones. They
    /// are closed in the background, since a close waits for the broker's answer and the broker may be
    /// the one not answering. Called by the dispatcher's loop, which never publishes at the same time.
    /// </summary>
    public void Abandon()
    {
        var (channel, connection) = (_channel, _connection);
        (_channel, _connection) = (null, null);
        _ = Task.Run(async () =>
        {
            try
            {
                if (channel is not null)
                {
                    await channel.DisposeAsync();
                }

                if (connection is not null)
                {
                    await connection.DisposeAsync();
                }
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // Gone either way.
            }
        });
    }

    /// <summary>The open channel (a new one when the last closed) and its connection's negotiated frame size.</summary>
    private async Task<(IChannel Channel, uint FrameMax)> ChannelAsync(CancellationToken cancellationToken)
    {
        if (_channel is { IsOpen: true } open && _connection is { } connection)
        {
            return (open, connection.FrameMax);
        }

        await _gate.WaitAsync(cancellationToken);
        try
        {
            if (_channel is { IsOpen: true } raced && _connection is { } racedConnection)
            {
                return (raced, racedConnection.FrameMax);
            }

            await CloseAsync();
            _connection = await options.Value.ConnectAsync("conveyor-redelivery-dispatcher", cancellationToken);
            _channel = await _connection.CreateChannelAsync(
                new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true),
                cancellationToken);
            return (_channel, _connection.FrameMax);
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task CloseAsync()
    {
        if (_channel is not null)
        {
            await _channel.DisposeAsync();
            _channel = null;
        }

        if (_connection is not null)
        {
            await _connection.DisposeAsync();
            _connection = null;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await CloseAsync();
        _gate.Dispose();
    }
}
