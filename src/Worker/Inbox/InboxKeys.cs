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

    /// <summary>For messages without a business key: the first MessageId it was sent with.</summary>
    public static string FallbackKey(ConsumeContext context) =>
        (context.Headers.Get<Guid>(OriginalMessageIdHeader) ?? context.MessageId)?.ToString()
        ?? throw new InvalidOperationException("The message has neither a business key nor a MessageId.");

    /// <summary>
    /// The job id the sender claims (<see cref="JobHeaders.JobId"/>): unchecked, so only a claim
    /// (<see cref="Jobs.JobRef"/>); the job's own id is its row's.
    /// </summary>
    /// <remarks>
    /// Any sender can put any JSON there: a number or an object is no claim, and ignored like an
    /// unknown id (<c>Headers.Get&lt;string&gt;</c> threw for them, and the command never ran).
    /// </remarks>
    public static Guid? ClaimedJobIdOf(ConsumeContext context) =>
        context.Headers.TryGetHeader(JobHeaders.JobId, out var value) ? value switch
        {
            Guid id => id,
            string text when Guid.TryParse(text, out var id) => id,
            JsonElement { ValueKind: JsonValueKind.String } element when Guid.TryParse(element.GetString(), out var id) => id,
            _ => null,
        } : null;
}
