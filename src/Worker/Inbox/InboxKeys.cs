using System.Text.Json;
using Conveyor.Contracts;
using MassTransit;

namespace Conveyor.Worker.Inbox;

/// <summary>What identifies a message to the inbox, and the job it belongs to.</summary>
public static class InboxKeys
{
    private const string OriginalMessageIdHeader = "MT-OriginalMessageId";

    /// <summary>One consumer per receive endpoint, so the queue name is the consumer's stable id.</summary>
    public static string ConsumerIdOf(ConsumeContext context) =>
        context.ReceiveContext.InputAddress.AbsolutePath.TrimEnd('/').Split('/')[^1];

    /// <summary>
    /// For messages without a business key: the first MessageId it was sent with, when the sender's
    /// <c>MT-OriginalMessageId</c> header names one (<see cref="GuidHeader"/>), else its own MessageId.
    /// </summary>
    public static string FallbackKey(ConsumeContext context) =>
        (GuidHeader(context, OriginalMessageIdHeader) ?? context.MessageId)?.ToString()
        ?? throw new InvalidOperationException("The message has neither a business key nor a MessageId.");

    /// <summary>
    /// The job id the sender claims (<see cref="JobHeaders.JobId"/>): unchecked, so only a claim
    /// (<see cref="Jobs.JobRef"/>); the job's own id is its row's.
    /// </summary>
    public static Guid? ClaimedJobIdOf(ConsumeContext context) => GuidHeader(context, JobHeaders.JobId);

    /// <summary>The id in header <paramref name="name"/>, or null when it holds none.</summary>
    /// <remarks>
    /// Any sender can put any JSON there: a number, an object or a string that is no id names nothing,
    /// and is ignored like a missing header. MassTransit's <c>Headers.Get&lt;string&gt;</c> and
    /// <c>Get&lt;Guid&gt;</c> throw for a value they cannot convert, and the command never ran: it went
    /// to <c>_error</c> for a reason that had nothing to do with it.
    /// </remarks>
    private static Guid? GuidHeader(ConsumeContext context, string name) =>
        context.Headers.TryGetHeader(name, out var value) ? value switch
        {
            Guid id => id,
            string text when Guid.TryParse(text, out var id) => id,
            JsonElement { ValueKind: JsonValueKind.String } element when Guid.TryParse(element.GetString(), out var id) => id,
            _ => null,
        } : null;
}
